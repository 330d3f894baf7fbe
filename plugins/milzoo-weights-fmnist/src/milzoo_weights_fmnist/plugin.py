"""Registers the Hub folders this distribution ships as pretrained entries (docs/hub.md)."""

from milzoo import hookimpl


@hookimpl
def milzoo_register_pretrained(register):
    from milzoo.hub.pretrained import register_package_entries

    register_package_entries(register, "milzoo_weights_fmnist")
