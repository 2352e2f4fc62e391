"""Reflex configuration for the backpropagate web app (`backprop ui` runs it)."""

import reflex as rx

config = rx.Config(
    app_name="backpropagate_app",
    telemetry_enabled=False,
    show_built_with_reflex=False,
    plugins=[rx.plugins.RadixThemesPlugin(theme=rx.theme(
        appearance="light", accent_color="indigo", gray_color="slate", radius="medium",
        has_background=True))],
    disable_plugins=[rx.plugins.SitemapPlugin],
)
