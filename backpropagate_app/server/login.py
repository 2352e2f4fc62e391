"""The login page the gate serves itself: plain HTML, no script, works before any app code loads."""

from __future__ import annotations

from html import escape

_STYLE = """
:root { color-scheme: light dark; }
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: grid; place-items: center;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       background: #f6f7f9; color: #1c2024; }
main { width: min(360px, 92vw); background: #fff; border: 1px solid #e0e3e8; border-radius: 12px;
       padding: 28px 28px 24px; box-shadow: 0 6px 24px rgba(0,0,0,.06); }
h1 { font-size: 20px; margin: 0 0 4px; }
p.sub { margin: 0 0 20px; color: #60646c; font-size: 14px; }
label { display: block; font-size: 13px; font-weight: 600; margin: 14px 0 6px; }
input { width: 100%; padding: 9px 11px; font: inherit; border: 1px solid #cdd1d8; border-radius: 8px;
        background: #fff; color: inherit; }
input:focus { outline: 2px solid #3e63dd; outline-offset: 1px; border-color: #3e63dd; }
button { width: 100%; margin-top: 22px; padding: 10px; font: inherit; font-weight: 600; color: #fff;
         background: #3e63dd; border: 0; border-radius: 8px; cursor: pointer; }
button:hover { background: #3358d4; }
.error { margin: 0 0 8px; padding: 8px 11px; border-radius: 8px; background: #ffefef; color: #c62a2f;
         font-size: 14px; }
.note { margin: 18px 0 0; font-size: 12px; color: #80838d; }
@media (prefers-color-scheme: dark) {
  body { background: #111113; color: #edeef0; }
  main { background: #18191b; border-color: #2e3135; }
  input { background: #111113; border-color: #3a3f44; }
  p.sub, .note { color: #b0b4ba; }
  .error { background: #3b1219; color: #ff9592; }
}
"""


def login_page(next_path: str = "/", error: str | None = None) -> bytes:
    """The login form, posting USER/PASSWORD to /login and coming back to `next_path`."""
    problem = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<link rel="icon" href="data:,">
<title>Sign in · backpropagate</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>backpropagate</h1>
<p class="sub">Sign in to fine-tune and watch runs.</p>
{problem}
<form method="post" action="/login" autocomplete="on">
<input type="hidden" name="next" value="{escape(next_path, quote=True)}">
<label for="user">User</label>
<input id="user" name="user" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
<p class="note">This app is protected because it was started with <code>--auth</code>.</p>
</main>
</body>
</html>
""".encode()
