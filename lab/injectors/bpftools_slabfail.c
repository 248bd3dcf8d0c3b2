// SPDX-License-Identifier: GPL-2.0
/*
 * bpftools_slabfail: make the biovec slab allocations of one task (or cgroup) fail, for tests.
 *
 * A kretprobe on kmem_cache_alloc (kmem_cache_alloc_noprof on 6.10+) frees the object and returns
 * NULL when all of these hold: injection is enabled (and its window not over), current is the
 * target (tgid == pid, or its cgroup v2 id == cgroup_id), and the call is one of the biovec
 * allocations learned at load time. Learning: with the kretprobe armed, the module allocates bios
 * of 16, 64, 128 and 256 vectors from fs_bio_set and records, for each, the (cache, call site)
 * pair of the bvec allocation (the bio slab itself, fs_bio_set's bio_pool, is left out). So the
 * match is exact even where SLUB merged a biovec cache with another cache of the same size, and
 * it needs no kallsyms and no struct kmem_cache (private to mm/ since 6.8).
 *
 * Parameters (also writable in /sys/module/bpftools_slabfail/parameters):
 *   cache      name prefix of the biovec caches to fail (default "biovec-"; "biovec-256" = max)
 *   pid        target tgid (0: none)          cgroup_id  target cgroup v2 id (0: none)
 *   enable     1 starts injecting (and the window), 0 stops
 *   window_ms  stop injecting this long after enable (0: no limit)
 *   drain      on enable, take the reserved elements of fs_bio_set's bvec mempool (the module's
 *              own biovec-max allocations fail, so mempool_alloc hands out the reserve) and keep
 *              them until enable goes back to 0 (or unload): then the target's first failed bvec
 *              allocation sleeps in mempool_alloc, without needing other bios in flight
 * /proc/bpftools_slabfail: "<cache> <failures injected>" per learned cache, "active 0|1",
 * "hoarded N" (reserved elements held), "slub_oom N" (see below), then "site <cache> <call site>" lines.
 *
 * Writing "slub_oom" to /proc/bpftools_slabfail makes one allocation from a cache of the module's own
 * (SLUB_OOM_CACHE, never merged: it has a constructor) fail where SLUB reports it: while a kretprobe on
 * the page allocator fails the writing thread's page allocations, kmem_cache_alloc(GFP_KERNEL) needs a
 * new slab, gets no page, calls slab_out_of_memory ("SLUB: Unable to allocate memory on node -1") and
 * returns NULL. The write fails with EIO if the allocation did not fail; "slub_oom N" counts those that did.
 */
#include <linux/module.h>
#include <linux/gfp.h>
#include <linux/kprobes.h>
#include <linux/mempool.h>
#include <linux/mutex.h>
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/cgroup.h>
#include <linux/jiffies.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>

struct target {
	const char *name;
	unsigned short nr_vecs;
	struct kmem_cache *cache;	/* learned */
	unsigned long site;		/* learned: return address of the kmem_cache_alloc call */
	bool selected;
	atomic_long_t injected;
};

static struct target targets[] = {
	{ .name = "biovec-16", .nr_vecs = 16 },
	{ .name = "biovec-64", .nr_vecs = 64 },
	{ .name = "biovec-128", .nr_vecs = 128 },
	{ .name = "biovec-max", .nr_vecs = 256 },
};

static char *cache = "biovec-";
module_param(cache, charp, 0444);
MODULE_PARM_DESC(cache, "name prefix of the biovec caches to fail (biovec-256 means biovec-max)");
static int target_pid;
module_param_named(pid, target_pid, int, 0644);
MODULE_PARM_DESC(pid, "target tgid (0: none)");
static unsigned long long target_cgroup;
module_param_named(cgroup_id, target_cgroup, ullong, 0644);
MODULE_PARM_DESC(cgroup_id, "target cgroup v2 id (0: none)");
static unsigned int window_ms;
module_param(window_ms, uint, 0644);
MODULE_PARM_DESC(window_ms, "stop injecting this many ms after enable (0: no limit)");

static bool drain;
module_param(drain, bool, 0644);
MODULE_PARM_DESC(drain, "on enable, hold fs_bio_set's reserved bvec elements until disable");

#define MAX_HOARD 16
static bool enabled;
static unsigned long enabled_at;
static struct task_struct *learner, *drainer;
static struct target *learning;
static void *hoard[MAX_HOARD];
static int hoarded;
static DEFINE_MUTEX(hoard_lock);

static void drain_reserve(void);
static void return_reserve(void);

static int enable_set(const char *val, const struct kernel_param *kp)
{
	int ret = param_set_bool(val, kp);

	if (ret)
		return ret;
	WRITE_ONCE(enabled_at, jiffies);
	if (READ_ONCE(enabled) && READ_ONCE(drain))
		drain_reserve();
	else if (!READ_ONCE(enabled))
		return_reserve();
	return 0;
}

static const struct kernel_param_ops enable_ops = {
	.set = enable_set,
	.get = param_get_bool,
};
module_param_cb(enable, &enable_ops, &enabled, 0644);
MODULE_PARM_DESC(enable, "1: inject failures (starts the window), 0: stop");

static bool active(void)
{
	unsigned int window = READ_ONCE(window_ms);

	if (!READ_ONCE(enabled))
		return false;
	return !window || time_before(jiffies, READ_ONCE(enabled_at) + msecs_to_jiffies(window));
}

static bool is_target(void)
{
	unsigned long long cg = READ_ONCE(target_cgroup);
	int p = READ_ONCE(target_pid);
	bool hit = false;

	if (p && current->tgid == p)
		return true;
#ifdef CONFIG_CGROUPS
	if (cg) {
		rcu_read_lock();
		hit = cgroup_id(task_dfl_cgroup(current)) == cg;
		rcu_read_unlock();
	}
#endif
	return hit;
}

struct call {
	struct kmem_cache *cache;
	struct target *target;
};

/* At kmem_cache_alloc entry (before the return address is replaced): decide whether to fail it. */
static int alloc_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct kmem_cache *s = (struct kmem_cache *)regs->di;
	unsigned long site = *(unsigned long *)regs->sp;	/* x86-64: return address at entry */
	struct call *call = (struct call *)ri->data;
	int i;

	if (unlikely(READ_ONCE(learner) == current)) {
		struct target *t = READ_ONCE(learning);

		if (t && s != (struct kmem_cache *)fs_bio_set.bio_pool.pool_data && !t->cache) {
			t->cache = s;
			t->site = site;
		}
		return 1;
	}
	if (unlikely(READ_ONCE(drainer) == current)) {
		struct target *max = &targets[ARRAY_SIZE(targets) - 1];

		if (max->cache != s || max->site != site)
			return 1;
		call->cache = s;
		call->target = NULL;	/* not counted: the module's own allocation */
		return 0;
	}
	if (likely(!active()) || !is_target())
		return 1;
	for (i = 0; i < ARRAY_SIZE(targets); i++) {
		if (targets[i].selected && targets[i].cache == s && targets[i].site == site) {
			call->cache = s;
			call->target = &targets[i];
			return 0;
		}
	}
	return 1;
}

static int alloc_return(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct call *call = (struct call *)ri->data;
	void *obj = (void *)regs_return_value(regs);

	if (obj) {
		kmem_cache_free(call->cache, obj);
		regs_set_return_value(regs, 0);
		if (call->target)
			atomic_long_inc(&call->target->injected);
	}
	return 0;
}

/* Register RP on the first of SYMBOLS this kernel has (the names change between releases). RP may have
 * been registered and unregistered before: its kprobe is reset. */
static int register_on_first(struct kretprobe *rp, const char *const *symbols, size_t count)
{
	int ret = -ENOENT;
	size_t i;

	for (i = 0; i < count && ret; i++) {
		memset(&rp->kp, 0, sizeof(rp->kp));
		rp->kp.symbol_name = symbols[i];
		ret = register_kretprobe(rp);
	}
	return ret;
}

static struct kretprobe alloc_probe = {
	.entry_handler = alloc_entry,
	.handler = alloc_return,
	.data_size = sizeof(struct call),
	.maxactive = 64,
};

static struct bio *learn_bio(unsigned short nr_vecs)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 18, 0)
	return bio_alloc_bioset(NULL, nr_vecs, 0, GFP_KERNEL, &fs_bio_set);
#else
	return bio_alloc_bioset(GFP_KERNEL, nr_vecs, &fs_bio_set);
#endif
}

static void learn(void)
{
	int i;

	WRITE_ONCE(learner, current);
	for (i = 0; i < ARRAY_SIZE(targets); i++) {
		struct bio *bio;

		WRITE_ONCE(learning, &targets[i]);
		bio = learn_bio(targets[i].nr_vecs);
		WRITE_ONCE(learning, NULL);
		if (bio)
			bio_put(bio);
	}
	WRITE_ONCE(learner, NULL);
}

/*
 * Take every reserved element of fs_bio_set's bvec mempool: our own slab allocations fail (as
 * the target's will), so mempool_alloc(GFP_NOWAIT) hands out the reserve until it is empty.
 * From then on a target whose biovec-max allocation fails sleeps in mempool_alloc.
 */
static void drain_reserve(void)
{
	void *element;

	if (!targets[ARRAY_SIZE(targets) - 1].cache)
		return;		/* not learned yet (enable=1 at insmod): nothing to fail */
	mutex_lock(&hoard_lock);
	WRITE_ONCE(drainer, current);
	while (hoarded < MAX_HOARD) {
		element = mempool_alloc(&fs_bio_set.bvec_pool, GFP_NOWAIT);
		if (!element)
			break;
		hoard[hoarded++] = element;
	}
	WRITE_ONCE(drainer, NULL);
	mutex_unlock(&hoard_lock);
}

/* Give the elements back: mempool_free refills the reserve and wakes its sleepers. */
static void return_reserve(void)
{
	mutex_lock(&hoard_lock);
	while (hoarded > 0)
		mempool_free(hoard[--hoarded], &fs_bio_set.bvec_pool);
	mutex_unlock(&hoard_lock);
}

#define SLUB_OOM_CACHE "bpftools_slub_oom"
static struct task_struct *page_failer;
static atomic_long_t slub_ooms;

/* At the page allocator's entry: fail this call when the thread is the one running slub_oom. */
static int page_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	if (likely(READ_ONCE(page_failer) != current))
		return 1;
	*(unsigned int *)ri->data = (unsigned int)regs->si;	/* x86-64: order, the second argument */
	return 0;
}

static int page_return(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct page *page = (struct page *)regs_return_value(regs);

	if (page) {
		__free_pages(page, *(unsigned int *)ri->data);
		regs_set_return_value(regs, 0);
	}
	return 0;
}

static struct kretprobe page_probe = {
	.entry_handler = page_entry,
	.handler = page_return,
	.data_size = sizeof(unsigned int),
	.maxactive = 64,
};

static void oom_ctor(void *object)
{
}

static int slub_oom(void)
{
	static const char *const symbols[] = { "__alloc_pages_noprof", "__alloc_pages", "__alloc_pages_nodemask" };
	struct kmem_cache *cache;
	void *object;
	int ret;

	cache = kmem_cache_create(SLUB_OOM_CACHE, 64, 0, 0, oom_ctor);
	if (!cache)
		return -ENOMEM;
	ret = register_on_first(&page_probe, symbols, ARRAY_SIZE(symbols));
	if (!ret) {
		WRITE_ONCE(page_failer, current);
		object = kmem_cache_alloc(cache, GFP_KERNEL);
		WRITE_ONCE(page_failer, NULL);
		unregister_kretprobe(&page_probe);
		if (object) {
			kmem_cache_free(cache, object);
			ret = -EIO;
		} else {
			atomic_long_inc(&slub_ooms);
		}
	}
	kmem_cache_destroy(cache);
	return ret;
}

static ssize_t slabfail_write(struct file *file, const char __user *buf, size_t count, loff_t *ppos)
{
	char cmd[16];
	size_t n = min(count, sizeof(cmd) - 1);
	int ret;

	if (copy_from_user(cmd, buf, n))
		return -EFAULT;
	cmd[n] = 0;
	if (strcmp(strim(cmd), "slub_oom"))
		return -EINVAL;
	ret = slub_oom();
	return ret ? ret : count;
}

static bool selected(const char *name)
{
	if (!strcmp(cache, "biovec-256"))
		return !strcmp(name, "biovec-max");
	return !strncmp(name, cache, strlen(cache));
}

static int slabfail_show(struct seq_file *m, void *v)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(targets); i++)
		if (targets[i].selected)
			seq_printf(m, "%s %ld\n", targets[i].name, atomic_long_read(&targets[i].injected));
	seq_printf(m, "active %d\n", active());
	seq_printf(m, "hoarded %d\n", READ_ONCE(hoarded));
	seq_printf(m, "slub_oom %ld\n", atomic_long_read(&slub_ooms));
	for (i = 0; i < ARRAY_SIZE(targets); i++)
		if (targets[i].selected)
			seq_printf(m, "site %s %pS\n", targets[i].name, (void *)targets[i].site);
	return 0;
}

static int slabfail_open(struct inode *inode, struct file *file)
{
	return single_open(file, slabfail_show, NULL);
}

static const struct proc_ops slabfail_ops = {
	.proc_open = slabfail_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_write = slabfail_write,
};

static int __init slabfail_init(void)
{
	static const char *const symbols[] = { "kmem_cache_alloc_noprof", "kmem_cache_alloc" };
	int i, ret, any = 0;

	for (i = 0; i < ARRAY_SIZE(targets); i++) {
		targets[i].selected = selected(targets[i].name);
		any |= targets[i].selected;
	}
	if (!any)
		return -EINVAL;
	ret = register_on_first(&alloc_probe, symbols, ARRAY_SIZE(symbols));
	if (ret)
		return ret;
	learn();
	for (i = 0; i < ARRAY_SIZE(targets); i++) {
		if (targets[i].selected && !targets[i].cache) {
			pr_warn("bpftools_slabfail: could not learn the %s allocation\n", targets[i].name);
			ret = -ENOENT;
		}
	}
	if (!ret && !proc_create("bpftools_slabfail", 0644, NULL, &slabfail_ops))
		ret = -ENOMEM;
	if (ret)
		unregister_kretprobe(&alloc_probe);
	return ret;
}

static void __exit slabfail_exit(void)
{
	remove_proc_entry("bpftools_slabfail", NULL);
	WRITE_ONCE(enabled, false);
	return_reserve();
	unregister_kretprobe(&alloc_probe);
}

module_init(slabfail_init);
module_exit(slabfail_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("bpftools lab: fail the biovec slab allocations of one task");
