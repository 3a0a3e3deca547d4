"""Screenshot of `nla serve` on the shipped NLA (docs/viewer.png): explain a prompt, click its last token, steer an
edit of its explanation (Paris -> London) at the default alpha.

Run: .venv/bin/python scripts/viewer_screenshot.py [--nla smollm2-135m-L20] [--out docs/viewer.png]"""

from __future__ import annotations

import argparse
import re
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
TOPIC = [("Eiffel Tower", "Big Ben"), ("Eiffel", "Big Ben"), ("Paris", "London"), ("French", "English")]


def topic_edit(explanation: str) -> str:
    """The edit that steers on the shipped NLA (its MODEL_CARD): replace the topic words and the quoted guesses
    inside the usual format, here towards London; where the explanation names none of TOPIC, its first sentence's
    topic list ("... prose on city, city and capital.") becomes London's. Steered at the page's default alpha, 0.25
    of |h|."""
    edited = explanation
    for old, new in TOPIC:
        edited = edited.replace(old, new)
    if edited == explanation:
        edited = re.sub(r"\bon [^.\n]+\.", "on London, England and Big Ben.", edited, count=1)
    return re.sub(r'expects "[^"\n]*"(, "[^"\n]*")*', 'expects "Charles", "Sir", "London"', edited, count=1)


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
            last = page.locator("#tokens .tok").count() - 1
            page.click(f'#tokens .tok[data-pos="{last}"]')  # " by": the continuation comes next
            page.wait_for_function("() => document.querySelectorAll('#topk li').length >= 10")
            original = page.input_value("#edit")
            edited = topic_edit(original)
            if edited == original:
                sys.exit(f"found no topic words to replace in the last token's explanation: {original!r}")
            assert page.input_value("#alpha") == "0.25", page.input_value("#alpha")  # the page's default
            page.fill("#edit", edited)
            page.eval_on_selector("#edit", "e => { e.scrollTop = 0; }")  # the edited topic in view
            page.click("#steer-btn")
            page.wait_for_selector("#steer-box[data-done='1']")
            page.screenshot(path=args.out, full_page=True)
            shown = page.eval_on_selector_all(".compare .out", "els => els.map(e => e.textContent)")
            print(f"explanation: {original}\nedited: {edited}\noriginal/steered: {shown}")
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
