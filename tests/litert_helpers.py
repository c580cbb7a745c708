"""LiteRT interpreter helpers shared by the tests, in-process and in their subprocesses."""


def run_interpreter(interpreter, x):
    """The first output of `interpreter` for the batch `x` (its first input resized to
    x's shape)."""
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
