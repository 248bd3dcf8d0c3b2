"""bpftools.kernel.tracefs: reading tracefs files (fixtures stand in for kernels without kprobes)."""

from bpftools.kernel.tracefs import kprobe_misses


def test_kprobe_misses_sums_this_processes_bcc_events(tmp_path):
    (tmp_path / "kprobe_profile").write_text(
        "  r_kmem_cache_alloc_bcc_4242                       1907               17\n"
        "  p_kmem_cache_alloc_bcc_4242                       1907                0\n"
        "  r_mempool_alloc_bcc_4242                            12                3\n"
        "  r_kmem_cache_alloc_bcc_99                          500               40\n"
        "  myprobe                                              1                1\n")
    assert kprobe_misses(4242, str(tmp_path)) == 20
    assert kprobe_misses(99, str(tmp_path)) == 40
    assert kprobe_misses(7, str(tmp_path)) == 0
    assert kprobe_misses(4242, str(tmp_path / "absent")) == 0
