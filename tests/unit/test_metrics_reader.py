"""The workers' metric files, read as the gateway's ``/metrics`` reads them: a file that
cannot be read costs its own values, never every other file's."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from hitl_workers.observe.metrics_reader import NodesCollector, node_dir

NODE = "worker@host-1"


def write_counter(path: Path, value: float) -> None:
    """A process's counter file, written by prometheus-client's own writer."""
    values = MmapedDict(str(path))
    try:
        key = mmap_key("hitl_exits_total", "hitl_exits_total", ["exit"], ["claimed"], "Exits.")
        values.write_value(key, value, 0.0)
    finally:
        values.close()


def exits(collector: NodesCollector) -> dict[str, float]:
    return {s.labels["node"]: s.value for family in collector.collect()
            for s in family.samples if s.name == "hitl_exits_total"}


def test_an_empty_file_left_by_a_killed_process_is_read_as_nothing_recorded(tmp_path: Path
                                                                          ) -> None:
    # Given two processes' counters, and the empty file of a process killed as it started
    # (prometheus-client creates the file before it sizes it)
    node = node_dir(tmp_path, NODE)
    node.mkdir(parents=True)
    write_counter(node / "counter_101.db", 2.0)
    write_counter(node / "counter_102.db", 3.0)
    (node / "counter_103.db").touch()
    # When the node's files are read, then both counters are there, summed
    assert exits(NodesCollector(tmp_path)) == {node.name: 5.0}


def test_a_corrupt_file_is_left_out_and_the_others_still_count(tmp_path: Path,
                                                              caplog) -> None:
    # Given one node's good file and a file whose header claims more than it holds, and
    # another node's good file
    node, other = node_dir(tmp_path, NODE), node_dir(tmp_path, "worker@host-2")
    node.mkdir(parents=True)
    other.mkdir(parents=True)
    write_counter(node / "counter_101.db", 2.0)
    (node / "counter_104.db").write_bytes((10_000).to_bytes(4, "little") + b"\0" * 60)
    write_counter(other / "counter_201.db", 7.0)
    # When they are read, then the good files count and the bad one is named in the log
    assert exits(NodesCollector(tmp_path)) == {node.name: 2.0, other.name: 7.0}
    assert "counter_104.db" in caplog.text
