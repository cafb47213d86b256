"""The Hive server's entry point for the example app (APP=example builds).

Both kinds of image run `uvicorn api.serve:app --factory ...`, the Hive server's own start
command; here the factory returns the example API of examples/hive/app.
"""


def app():
    from app.main import app as example

    return example
