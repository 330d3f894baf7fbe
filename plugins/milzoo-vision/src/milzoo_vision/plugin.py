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


@hookimpl
def milzoo_register_downloads(register):
    from milzoo.components.download import Download
    from milzoo_vision import readers
    from milzoo_vision.encoders import RESNET18_DOWNLOAD, fetch_resnet18_weights, resnet18_weights_file

    def base(root):
        return readers._base(root)

    register(Download("fmnist", "Fashion-MNIST (30 MB) for fmnist_bags and the milzoo-survival FMNIST datasets",
                      fetch=readers.fetch_fmnist, destination=base))
    register(Download("cifar10", "CIFAR-10, python version (163 MB), for cifar10_bags",
                      fetch=lambda root: readers.fetch_cifar(root, 10), destination=base))
    register(Download("cifar100", "CIFAR-100, python version (161 MB), for cifar100_bags",
                      fetch=lambda root: readers.fetch_cifar(root, 100), destination=base))
    register(Download("svhn", "SVHN cropped digits (train 182 MB, test 64 MB; needs scipy) for svhn_bags",
                      fetch=readers.fetch_svhn, destination=base))
    register(Download(RESNET18_DOWNLOAD, "ImageNet weights of ResNet-18 (IMAGENET1K_V1, 45 MB) for the resnet18 "
                      "encoder with pretrained = true", fetch=fetch_resnet18_weights,
                      destination=lambda root: resnet18_weights_file(), uses_root=False))
