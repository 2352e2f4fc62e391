"""The frame around every page: header with the current run's status, left navigation."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import reflex as rx

from backpropagate_app.tasks import attempt
from backpropagate_app import components as ui
from backpropagate_app import facade
from backpropagate_app.server import gate

NAV = [
    ("Dataset", "/dataset", "database"),
    ("Train", "/train", "flame"),
    ("Multi-Run", "/multi-run", "layers"),
    ("Export", "/export", "package"),
    ("Runs", "/runs", "list"),
]
HEADER_POLL_S = 0.5
REAP_EVERY_S = 5.0
"""How often the header checks for workers that died without reporting."""


@dataclass(frozen=True)
class Page:
    route: str
    title: str
    component: Callable[[], rx.Component]
    on_load: list


def header_status(runs: list) -> dict[str, str]:
    """What the header shows: the newest active run, else the newest run, else nothing."""
    if not runs:
        return {"id": "", "label": "no runs yet", "status": ""}
    active = [r for r in runs if r.active]
    run = active[0] if active else runs[0]
    # No step count here: the header would then re-render with every step, and the run
    # panel already shows progress.
    name = run.name or run.id[:8]
    return {"id": run.id, "label": name if active else f"last run {name}", "status": run.status}


def read_header(reap: bool) -> dict[str, str]:
    store = facade.store()
    if reap:
        store.reap_dead()
    return header_status(store.list(limit=50))


class ShellState(rx.State):
    """The header's run status, kept current while any page is open."""

    run_id: str = ""
    run_label: str = ""
    run_status: str = ""

    @rx.event(background=True)
    async def watch(self):
        """Poll the store; the page's load chain cancels this task on navigation or disconnect."""
        shown: dict | None = None
        reaped, stamp = 0.0, None
        while True:
            reap = time.monotonic() - reaped > REAP_EVERY_S
            now_stamp, _ = await attempt(lambda: facade.store().stamp())
            if not reap and shown is not None and now_stamp is not None and now_stamp == stamp:
                await asyncio.sleep(HEADER_POLL_S)  # nothing written since the last read
                continue
            stamp = now_stamp
            info, error = await attempt(read_header, reap)
            if error:
                info = {"id": "", "label": f"run store unreadable: {error['message']}", "status": "failed"}
            if reap:
                reaped = time.monotonic()
            if info != shown:
                async with self:
                    self.run_id, self.run_label, self.run_status = info["id"], info["label"], info["status"]
                shown = info
            await asyncio.sleep(HEADER_POLL_S)


def header() -> rx.Component:
    return rx.hstack(
        rx.link(
            rx.hstack(rx.icon("activity", size=22), rx.heading("backpropagate", size="5"),
                      align="center", spacing="2"),
            href="/", underline="none", color=rx.color("gray", 12),
        ),
        rx.spacer(),
        rx.cond(
            ShellState.run_id != "",
            rx.link(
                rx.hstack(rx.text(ShellState.run_label, size="2", data_testid="header-run"),
                          ui.status_badge(ShellState.run_status, data_testid="header-status"),
                          align="center", spacing="2"),
                href="/runs/" + ShellState.run_id, underline="none",
            ),
            rx.text(ShellState.run_label, size="2", color_scheme="gray"),
        ),
        *sign_out(),
        align="center", padding_x="1.5em", padding_y="0.75em", width="100%",
        border_bottom=f"1px solid {rx.color('gray', 5)}", background=rx.color("gray", 1),
        position="sticky", top="0", z_index="10",
    )


SIGN_OUT_JS = "fetch('/logout', {method: 'POST', credentials: 'same-origin'}).finally(() => location.assign('/login'))"
"""The gate, not the app's router, answers /logout, and only to a POST (a GET from another
site must not sign anyone out); the page then loads the login page."""


def sign_out() -> list[rx.Component]:
    """A sign-out button when the server was started with a login."""
    if not gate.login_enabled():
        return []
    return [rx.el.button(rx.hstack(rx.icon("log-out", size=14), rx.text("Sign out", size="2"), align="center",
                                   spacing="1"),
                         on_click=rx.call_script(SIGN_OUT_JS), type="button", data_testid="sign-out",
                         style={"color": rx.color("gray", 11), "background": "none", "border": "none",
                                "cursor": "pointer", "margin_left": "1.25em"})]


def nav(active: str) -> rx.Component:
    def item(label: str, route: str, icon: str) -> rx.Component:
        selected = route == active
        return rx.link(
            rx.hstack(rx.icon(icon, size=16), rx.text(label, size="2"), align="center", spacing="2"),
            href=route, underline="none", padding_x="0.75em", padding_y="0.5em",
            border_radius="var(--radius-2)", data_testid=f"nav-{route.strip('/')}",
            background=rx.color("accent", 3) if selected else "transparent",
            color=rx.color("accent", 11) if selected else rx.color("gray", 11),
            weight="bold" if selected else "regular",
        )

    return rx.flex(
        *[item(*entry) for entry in NAV],
        direction=rx.breakpoints(initial="row", md="column"), wrap="wrap", spacing="1",
        padding="1em", min_width=rx.breakpoints(initial="auto", md="12em"),
        border_right=rx.breakpoints(initial="none", md=f"1px solid {rx.color('gray', 4)}"),
    )


def layout(active: str, title: str, *content: rx.Component) -> rx.Component:
    return rx.box(
        header(),
        rx.flex(
            nav(active),
            rx.vstack(rx.heading(title, size="6"), *content, spacing="4", padding="1.5em",
                      width="100%", max_width="80em", min_width="0"),
            direction=rx.breakpoints(initial="column", md="row"), width="100%",
            min_height="calc(100vh - 3.5em)",
        ),
        min_height="100vh", background=rx.color("gray", 2),
    )
