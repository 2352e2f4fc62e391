"""The Reflex app: its pages (the theme is in rxconfig.py). `backprop ui` serves it in prod mode."""

from __future__ import annotations

import reflex as rx

from backpropagate_app.server import gate
from backpropagate_app.pages import PAGES
from backpropagate_app.pages.train import page as train
from backpropagate_core import memory_limit


class GatedApp(rx.App):
    """The app served behind the gate. Reflex wraps whatever `api_transformer` returns in an
    outer layer of its own that answers CORS preflights (with the caller's Origin, and
    credentials allowed) before anything inside sees them; so the gate goes around the whole
    server Reflex builds instead, and every request, preflights included, passes it first."""

    def __call__(self):
        # The process that serves the UI: engine processes it starts run under the memory limit.
        memory_limit.mark_ui_server()
        return gate.wrap(super().__call__())


def create_app(**app_options) -> rx.App:
    """The app with every page added, served behind the gate; `app_options` go to `rx.App`."""
    app = GatedApp(**app_options)
    for page in PAGES:
        app.add_page(page.component, route=page.route, title=f"{page.title} · backpropagate",
                     on_load=page.on_load)
    # The home page is the Train page: that is what most people come for.
    app.add_page(train.PAGE.component, route="/", title="backpropagate", on_load=train.PAGE.on_load)
    return app


# The gate wraps the whole server (pages, assets, uploads, websocket, CORS): Host/Origin
# checks and security headers always; the login when `backprop ui --auth` asked for one.
app = create_app()
