"""NMI between K-means clusters of the embeddings and the labels."""

import numpy as np

from keras_featreg._utils import check_choice
from keras_featreg._host import check_embeddings, check_label_array


# --------------------------------------------------------------------------- #
# NMI
# --------------------------------------------------------------------------- #
def nmi(embeddings, labels, seed=0, average_method="geometric", n_init="auto"):
    """Normalized mutual information between K-means clusters and the labels.

    K-means (scikit-learn, k-means++ init) uses as many clusters as there are
    distinct labels. The paper's NMI is I(Ω; C) / √(H(Ω)·H(C)), i.e. scikit-learn's
    ``average_method="geometric"`` (scikit-learn's own default is "arithmetic",
    which gives slightly different numbers).

    Args:
        embeddings: array-like (n, d) of floats.
        labels: array-like (n,) with at least 2 distinct labels.
        seed: random state of K-means (an int, for reproducible values).
        average_method: "geometric" (default, the paper's), "arithmetic", "min" or
            "max".
        n_init: number of K-means restarts, passed to `sklearn.cluster.KMeans`.

    Returns:
        NMI as a Python float in [0, 1].

    Example:
    >>> x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> nmi(x, [0, 0, 1, 1])
    1.0
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    check_choice("average_method", average_method, ("geometric", "arithmetic", "min", "max"))
    x = check_embeddings(embeddings)
    labels = check_label_array(labels, x.shape[0])
    num_classes = np.unique(labels).size
    if num_classes < 2:
        raise ValueError(
            f"`labels` must contain at least 2 distinct classes for NMI. Received "
            f"{num_classes} class ({labels[0]!r})."
        )
    kmeans = KMeans(n_clusters=num_classes, n_init=n_init, random_state=seed)
    clusters = kmeans.fit_predict(x)
    return float(
        normalized_mutual_info_score(labels, clusters, average_method=average_method)
    )
