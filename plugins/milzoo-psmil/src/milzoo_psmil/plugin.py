"""Hook implementations: how PSMIL's components register themselves with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_poolings(register):
    from milzoo_psmil.pooling import PSAttPooling

    register(PSAttPooling)


@hookimpl
def milzoo_register_losses(register):
    from milzoo_psmil.loss import PSAliLoss

    register(PSAliLoss)


#: zoo name -> (recipe stem, dataset, extra distributions needed to load, description)
_PAPER_MODELS = {
    "psmil-camelyon16": ("camelyon16", "camelyon16", [],
                         "PSMIL on CAMELYON16 patch features: 5-fold CV ensemble, majority vote on the test slides"),
    "psmil-tcga-lung": ("tcga_lung", "tcga-lung", [],
                        "PSMIL on TCGA lung (LUAD vs LUSC) patch features: 5-fold CV ensemble, majority vote"),
    # the paper's full scale (a GPU run); the reduced-scale model trained on a CPU ships as `psmil-fmnist` in
    # the milzoo-weights-fmnist distribution
    "psmil-fmnist-full": ("fmnist", "fashion_mnist", ["milzoo-vision"],
                          "PSMIL (PSAtt + PSAli) with a CNN trained end to end on synthetic Fashion-MNIST bags at "
                          "the paper's full scale"),
    "psmil-svhn": ("svhn", "svhn", ["milzoo-vision"],
                   "PSMIL (PSAtt + PSAli) with a CNN trained end to end on synthetic SVHN bags"),
    "psmil-cifar10": ("cifar10", "cifar10", ["milzoo-vision"],
                      "PSMIL (PSAtt + PSAli) with a CNN trained end to end on synthetic CIFAR-10 bags"),
    "psmil-cifar100": ("cifar100", "cifar100", ["milzoo-vision"],
                       "PSMIL (PSAtt + PSAli) with a CNN trained end to end on synthetic CIFAR-100 bags"),
}


@hookimpl
def milzoo_register_pretrained(register):
    """The seed paper's models.  None is published yet: no weights could be uploaded from where they
    were set up, so each is unpublished (no revision, no metrics) and loading one explains how to train
    and push it.  Publishing = set ``revision`` to the commit `milzoo push` printed and ``published=True``,
    and copy the metrics from that run's summary.json."""
    from milzoo.hub.pretrained import PretrainedEntry

    for name, (stem, dataset, extra, description) in _PAPER_MODELS.items():
        register(PretrainedEntry(
            name=name,
            repo_id=f"milzoo/{name}",
            revision=None,
            recipe=f"psmil_{stem}",  # a shipped recipe's name (`milzoo recipes`)
            metrics={},
            license="apache-2.0",
            datasets=[dataset],
            requires=["milzoo-psmil", *extra],
            published=False,
            description=description,
            tags=["psmil", "wsi" if not extra else "image-bags"],
        ))


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo_psmil") / "recipes")  # package data (pyproject.toml); `milzoo recipes` lists them
