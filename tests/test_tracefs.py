"""bpftools.kernel.tracefs: reading tracefs files (fixtures stand in for kernels without kprobes)."""

from bpftools.kernel import tracefs
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


def test_kretprobe_maxactive_is_read_from_the_readme(tmp_path):
    """4.12+ (696ced4fb1d7) documents r[maxactive]; before, the kretprobe line had no such field; a
    tracefs without README (or none at all) says no."""
    new = tmp_path / "new"
    new.mkdir()
    (new / "README").write_text("  Create/append/remove/show the kprobe/uprobe events:\n"
                                "\t  p[:[<group>/][<event>]] <place> [<args>]\n"
                                "\t  r[maxactive][:[<group>/][<event>]] <place> [<args>]\n")
    old = tmp_path / "old"
    old.mkdir()
    (old / "README").write_text("\t  p[:[<group>/]<event>] <place> [<args>]\n\t  r[:[<group>/]<event>] <place> [<args>]\n")
    assert tracefs.kretprobe_maxactive(str(new)) is True
    assert tracefs.kretprobe_maxactive(str(old)) is False
    assert tracefs.kretprobe_maxactive(str(tmp_path / "none")) is False
