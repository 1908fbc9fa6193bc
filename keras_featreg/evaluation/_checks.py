"""Argument checks shared by the evaluation functions and the retrieval callback."""

import numbers

from keras_featreg._utils import check_int


def _ks_tuple(ks):
    """`ks` (an int or an iterable of ints >= 1) as a tuple, unsorted."""
    if isinstance(ks, numbers.Integral):
        ks = (ks,)
    ks = tuple(ks)
    if not ks:
        raise ValueError(f"`ks` must contain at least one value. Received: ks={ks}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"Every k in `ks` must be an integer. Received: ks={ks}")
        if k < 1:
            raise ValueError(f"Every k in `ks` must be >= 1. Received: ks={ks}")
    return ks


def check_ks(ks, num_samples):
    """Returns `ks` as a sorted tuple of distinct ints in [1, num_samples - 1]."""
    ks = _ks_tuple(ks)
    for k in ks:
        if k >= num_samples:
            raise ValueError(
                f"Every k in `ks` must be < the number of samples ({num_samples}): a "
                f"query has only {num_samples - 1} neighbours. Received: ks={ks}"
            )
    return tuple(sorted(set(int(k) for k in ks)))


def check_reference_ks(ks, num_neighbours, includes_query):
    """Returns `ks` as a sorted tuple of distinct ints in [1, num_neighbours] (the
    neighbours a query has in the reference set)."""
    ks = _ks_tuple(ks)
    if max(ks) > num_neighbours:
        without = " without the query itself" if includes_query else ""
        raise ValueError(
            f"Every k in `ks` must be <= the number of reference items{without} "
            f"({num_neighbours}). Received: ks={ks}"
        )
    return tuple(sorted(set(int(k) for k in ks)))


def _check_chunk_size(chunk_size):
    return check_int("chunk_size", chunk_size)
