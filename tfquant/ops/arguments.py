"""Argument checks shared by every floor: one message shape for a value that is not
allowed, "<owner>: <arg>=<value> is not supported; allowed: <what is>."."""

import numbers


def _describe(allowed):
    allowed = tuple(allowed)
    if len(allowed) > 8 and all(type(a) is int for a in allowed) and \
            allowed == tuple(range(allowed[0], allowed[0] + len(allowed))):
        return f"integers {allowed[0]}..{allowed[-1]}"
    return ", ".join(repr(a) if isinstance(a, str) else str(a) for a in allowed)


def not_supported(owner, arg, value, allowed_text):
    """The ValueError for `arg=value` of `owner` (None: no owner prefix)."""
    prefix = f"{owner}: " if owner else ""
    return ValueError(f"{prefix}{arg}={value!r} is not supported; allowed: {allowed_text}.")


def check_bits(owner, num_bits, allowed, arg="num_bits"):
    """`num_bits` as an int, or ValueError naming `owner` unless it is one of `allowed`."""
    allowed = tuple(allowed)
    if (isinstance(num_bits, bool) or not isinstance(num_bits, numbers.Integral)
            or int(num_bits) not in allowed):
        raise not_supported(owner, arg, num_bits, _describe(allowed))
    return int(num_bits)


def check_count(owner, arg, value, minimum=0):
    """`value` as an int ≥ `minimum` (None stays None), else ValueError naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise not_supported(owner, arg, value, f"a whole number ≥ {minimum}")
    return int(value)


def check_choice(owner, arg, value, allowed):
    """`value`, or ValueError naming `owner` unless it is one of `allowed`."""
    if value not in allowed:
        raise not_supported(owner, arg, value, _describe(allowed))
    return value


def check_pair(owner, arg, value):
    """`value` (a positive int or a pair of them, as Keras's kernel_size and strides) as
    a pair of ints, else ValueError naming `owner`."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                 and v >= 1 for v in pair):
        raise not_supported(owner, arg, value, "a positive int or a pair of them")
    return tuple(int(v) for v in pair)
