"""stub"""
NAME = "soak"
TITLE = "todo"


def run(ctx):
    raise NotImplementedError
