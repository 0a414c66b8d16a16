"""The spelling of options shared by every `msemoboost` command and `train.py`, shown at the end of each one's --help."""

CONVENTION = """Every msemoboost command and train.py spell their options one way: --model names a model to read (a
folder or a Hub id), --output a file to write, --output_dir a folder to write, --dataset_name a dataset (a Hub id or
a local folder); the words of an option are joined by underscores; a yes/no option alone means yes and also takes
true or false (--timeline, --timeline true, --timeline false); int8 is --quantize int8."""
