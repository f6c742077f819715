#  SPDX-License-Identifier: MIT OR Apache-2.0
"""rpc.py plugin for the iomemory bdev module (libiomemory_bdev.so).

Usage (the plugin's directory on PYTHONPATH):

    PYTHONPATH=$PYTHONPATH:/path/to/bdev/python \\
        scripts/rpc.py --plugin iomemory_rpc_plugin \\
        bdev_iomemory_create -b iom0 -p /var/lib/iomem/card0.img --format-if-blank

    scripts/rpc.py --plugin iomemory_rpc_plugin bdev_iomemory_delete iom0

The server validates every parameter; this plugin only builds the request.
"""


def bdev_iomemory_create(client, name, path=None, pci_address=None, format_if_blank=False,
                         sector_size=None, capacity=None, queue_depth=None, max_channels=None):
    """Create an iomemory bdev on an emulated card image or a PCI card.

    Args:
        name: bdev name
        path: emulated card image (made with `iomem sim create`)
        pci_address: PCI address of a real card (e.g. 0000:03:00.0)
        format_if_blank: format the card first if it holds no VSL format
        sector_size: 512 or 4096 (used when formatting)
        capacity: user capacity when formatting, e.g. "800MiB" or "78%"
        queue_depth: commands in flight per channel
        max_channels: most SPDK threads using the card at once

    Returns:
        The bdev name.
    """
    params = {'name': name}
    if path is not None:
        params['path'] = path
    if pci_address is not None:
        params['pci_address'] = pci_address
    if format_if_blank:
        params['format_if_blank'] = True
    if sector_size is not None:
        params['sector_size'] = sector_size
    if capacity is not None:
        params['capacity'] = capacity
    if queue_depth is not None:
        params['queue_depth'] = queue_depth
    if max_channels is not None:
        params['max_channels'] = max_channels
    return client.call('bdev_iomemory_create', params)


def bdev_iomemory_delete(client, name):
    """Delete an iomemory bdev: drain its I/O, checkpoint and detach the card.

    Args:
        name: bdev name
    """
    return client.call('bdev_iomemory_delete', {'name': name})


def bdev_iomemory_inject_power_cut(client, name, after_commands=0):
    """Cut the emulated card's power (fault injection: hot remove).

    Args:
        name: bdev name
        after_commands: card commands still executed first (0: now)
    """
    return client.call('bdev_iomemory_inject_power_cut',
                        {'name': name, 'after_commands': after_commands})


def _print(result):
    if isinstance(result, str):
        print(result)
    else:
        import json
        print(json.dumps(result, indent=2))


def spdk_rpc_plugin_initialize(subparsers):
    def create(args):
        _print(bdev_iomemory_create(args.client, name=args.name, path=args.path,
                                    pci_address=args.pci_address,
                                    format_if_blank=args.format_if_blank,
                                    sector_size=args.sector_size, capacity=args.capacity,
                                    queue_depth=args.queue_depth,
                                    max_channels=args.max_channels))

    p = subparsers.add_parser('bdev_iomemory_create',
                              help='Create an iomemory bdev on an ioMemory card (emulated image or PCI)')
    p.add_argument('-b', '--name', required=True, help='bdev name, e.g. iom0')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('-p', '--path', help='emulated card image (iomem sim create)')
    source.add_argument('-a', '--pci-address', dest='pci_address', help='PCI address of a real card')
    p.add_argument('-f', '--format-if-blank', dest='format_if_blank', action='store_true',
                   help='format the card first if it holds no VSL format')
    p.add_argument('--sector-size', dest='sector_size', type=int, choices=[512, 4096],
                   help='sector size used when formatting')
    p.add_argument('--capacity', help='user capacity when formatting, e.g. 800MiB or 78%%')
    p.add_argument('--queue-depth', dest='queue_depth', type=int,
                   help='commands in flight per channel (1-4096)')
    p.add_argument('--max-channels', dest='max_channels', type=int,
                   help='most SPDK threads using the card at once (1-256)')
    p.set_defaults(func=create)

    def delete(args):
        _print(bdev_iomemory_delete(args.client, name=args.name))

    p = subparsers.add_parser('bdev_iomemory_delete',
                              help='Delete an iomemory bdev (drains I/O, checkpoints the card)')
    p.add_argument('name', help='bdev name')
    p.set_defaults(func=delete)

    def power_cut(args):
        _print(bdev_iomemory_inject_power_cut(args.client, name=args.name,
                                              after_commands=args.after_commands))

    p = subparsers.add_parser('bdev_iomemory_inject_power_cut',
                              help='Cut an emulated card\'s power (fault injection: the bdev is hot-removed)')
    p.add_argument('name', help='bdev name')
    p.add_argument('-n', '--after-commands', dest='after_commands', type=int, default=0,
                   help='card commands still executed before power goes (default 0: now)')
    p.set_defaults(func=power_cut)
