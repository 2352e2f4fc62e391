"""Reflex configuration for the backpropagate web app (`backprop ui` runs it)."""

import reflex as rx

config = rx.Config(
    app_name="backpropagate_app",
    telemetry_enabled=False,
    show_built_with_reflex=False,
    plugins=[rx.plugins.RadixThemesPlugin()],
    disable_plugins=[rx.plugins.SitemapPlugin],
)
