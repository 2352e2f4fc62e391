"""The Reflex app: its pages (the theme is in rxconfig.py). `backprop ui` serves it in prod mode."""

from __future__ import annotations

import reflex as rx

from backpropagate_app.server import gate
from backpropagate_app.pages import PAGES
from backpropagate_app.pages.train import page as train

def create_app(**app_options) -> rx.App:
    """The app with every page added; `app_options` go to `rx.App` (e.g. `api_transformer`
    for an ASGI wrapper around the whole server)."""
    app = rx.App(**app_options)
    for page in PAGES:
        app.add_page(page.component, route=page.route, title=f"{page.title} · backpropagate",
                     on_load=page.on_load)
    # The home page is the Train page: that is what most people come for.
    app.add_page(train.PAGE.component, route="/", title="backpropagate", on_load=train.PAGE.on_load)
    return app


# The gate wraps the whole server (pages, assets, uploads, websocket): Host/Origin checks and
# security headers always; the login when `backprop ui --auth` asked for one.
app = create_app(api_transformer=gate.wrap)
