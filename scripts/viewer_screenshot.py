"""Screenshot of `nla serve` on the shipped NLA (docs/viewer.png): explain a prompt, click a token, steer an edit.

Run: .venv/bin/python scripts/viewer_screenshot.py [--nla smollm2-135m-L20] [--out docs/viewer.png]"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nla", default="smollm2-135m-L20")
    ap.add_argument("--out", default="docs/viewer.png")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "nlakit", "serve", "--nla", args.nla, "--port", str(port)])
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/api/info", timeout=2)
                break
            except OSError:
                time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(600_000)
            page.goto(url + "/")
            page.fill("#text", PROMPT)
            page.click("#explain-btn")
            page.wait_for_function("() => document.getElementById('status').textContent.startsWith('explained')")
            page.click('#tokens .tok[data-pos="14"]')  # " tower" in "lattice tower"
            page.wait_for_function("() => document.querySelectorAll('#topk li').length >= 10")
            original = page.input_value("#edit")
            page.fill("#edit", original.replace("Paris", "London") + " The subject is London.")
            page.eval_on_selector("#alpha", "el => { el.value = '2'; el.dispatchEvent(new Event('input')); }")
            page.click("#steer-btn")
            page.wait_for_selector("#steer-box[data-done='1']")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
