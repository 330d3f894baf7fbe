"""Hook implementations: how milzoo-vision registers its components with milzoo."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_encoders(register):
    from milzoo_vision.encoders import CNN2Encoder, ResNet18Encoder

    register(CNN2Encoder)
    register(ResNet18Encoder)


@hookimpl
def milzoo_register_augmentations(register):
    from milzoo_vision.augment import MILViews

    register(MILViews)


@hookimpl
def milzoo_register_datasets(register):
    from milzoo_vision.datasets import (
        CIFAR10Bags,
        CIFAR100Bags,
        FashionMNISTBags,
        SVHNBags,
    )

    register(FashionMNISTBags)
    register(SVHNBags)
    register(CIFAR10Bags)
    register(CIFAR100Bags)
