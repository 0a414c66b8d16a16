"""The demo page: upload or record speech and see the emotions an MS-EmoBoost model hears (Gradio; the Hugging Face
Spaces convention). Offline and on CPU with the model that `python train.py` writes:

    pip install -e '.[demo]'
    python app.py --model outputs/demo/model [--port 7860]
"""

import argparse
import tempfile
from pathlib import Path

from msemoboost.gradio_app import DemoModel, build_demo, example_recordings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/model", help="model directory or Hub id "
                        "(default: outputs/demo/model, what python train.py writes)")
    parser.add_argument("--port", type=int, default=None, help="port to serve on (default: Gradio's, 7860 or the next free)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = parser.parse_args(argv)
    model = DemoModel(args.model, args.device)
    examples = example_recordings(Path(tempfile.gettempdir()) / "msemoboost_demo_examples")
    demo = build_demo(model, examples)
    demo.launch(server_name=args.host, server_port=args.port, show_error=False,
                allowed_paths=[str(examples[0].parent), str(model.figures)])


if __name__ == "__main__":
    main()
