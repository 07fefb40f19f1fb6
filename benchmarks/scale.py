"""stub"""
NAME = "scale"
TITLE = "todo"


def run(ctx):
    raise NotImplementedError
