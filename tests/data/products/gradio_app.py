"""A tiny real Gradio app for the scanner's tests: one text box that echoes, on 127.0.0.1.

With --protected it uses Gradio's own login (launch(auth=...)): the UI and its API answer only after a login.

    python gradio_app.py --port 7860 [--protected]    (user tester; the password: $AIPERIMETER_TEST_GRADIO_PASSWORD)
"""

from __future__ import annotations

import argparse
import os

import gradio as gr


def echo(text: str) -> str:
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protected", action="store_true")
    args = parser.parse_args()
    password = os.environ.get("AIPERIMETER_TEST_GRADIO_PASSWORD") or "aiperimeter-test-password"
    demo = gr.Interface(fn=echo, inputs="text", outputs="text", title="aiperimeter test app")
    demo.launch(
        server_name="127.0.0.1",
        server_port=args.port,
        share=False,
        ssr_mode=False,
        auth=("tester", password) if args.protected else None,
        show_error=False,
        quiet=True,
    )


if __name__ == "__main__":
    main()
