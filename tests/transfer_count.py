"""Counting host <-> device transfers of Parameters (a measurement harness for tests and
benchmarks/rpg_update_time.py): Parameter.asnumpy is a device -> host copy, set_data host -> device."""


def count_transfers(run):
    """Call ``run()`` while counting Parameter.asnumpy / set_data calls; returns (reads, writes),
    each {parameter name: count}."""
    from mindspore import Parameter
    reads, writes = {}, {}
    real_read, real_write = Parameter.asnumpy, Parameter.set_data

    def read(self):
        reads[self.name] = reads.get(self.name, 0) + 1
        return real_read(self)

    def write(self, data, *args, **kwargs):
        writes[self.name] = writes.get(self.name, 0) + 1
        return real_write(self, data, *args, **kwargs)

    Parameter.asnumpy, Parameter.set_data = read, write
    try:
        run()
    finally:
        Parameter.asnumpy, Parameter.set_data = real_read, real_write
    return reads, writes
