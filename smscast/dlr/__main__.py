"""`python -m smscast.dlr serve ...`: the `dlr` commands without the rest of the command line."""

from smscast.dlr.cli import app

if __name__ == "__main__":  # importing the package's modules (the wheel test does) must not run the server
    app(prog_name="smscast dlr")
