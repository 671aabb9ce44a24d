// SPDX-License-Identifier: GPL-2.0
/*
 * chardev.c - a tiny character device for the chardev lab.
 *
 * Reading /dev/chardev returns "I already told you N times Hello world!\n",
 * where N counts the successful opens since the module was loaded before this
 * one: the first cat after loading says 0, the next 1, as in the article (the
 * count is printed, then incremented). Only one process may hold the device open at a time; a second
 * open() fails with EBUSY. Writing fails with EINVAL.
 *
 * The same source builds three variants, chosen with "make VARIANT=...":
 *
 *   safe     .owner = THIS_MODULE in the file_operations. The kernel takes a
 *            reference on the module for every open file (chrdev_open() does
 *            it before our open() runs), so "rmmod chardev" fails with
 *            "Module chardev is in use" while the file is open. This is the
 *            correct, modern way.
 *
 *   classic  try_module_get() in open() and module_put() in release(), as in
 *            the classic 2016 example. rmmod also says "in use", but there is
 *            a window: the reference is taken by code that lives in the
 *            module itself, after the kernel has already entered it. Nothing
 *            stops an unload between chrdev_open() finding our fops and our
 *            try_module_get(), and module_put() in release() drops the last
 *            reference while release() itself is still running. .owner
 *            closes both windows (the kernel takes and drops the reference
 *            outside our code); this does not.
 *
 *   crash    neither. Nothing holds the module, so rmmod succeeds while a
 *            process keeps the file open. The open file still points at the
 *            file_operations that lived in the freed module, and the next
 *            read(), lseek() or close() on it jumps into freed memory: an
 *            oops. This variant exists to show that failure on purpose.
 *
 * Why there is no class_create()/device_create(): the lab's Ansible role
 * creates /dev/chardev itself with mknod, using the major it reads from
 * /proc/devices. If the module also asked udev for a node, two parties would
 * manage the same path (udev would create and delete a node that Ansible
 * also creates, fixes and removes), and the lab would depend on udev running
 * in the VM. class_create() also changed its signature in 6.4 (it lost its
 * struct module * argument), so using it would need version #ifdefs to build
 * on 5.10, 6.1 and 6.12. register_chrdev() alone is stable on all three.
 *
 * Written for the chardev lab; the behaviour follows the well-known example
 * from the Linux Kernel Module Programming Guide, the code does not.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/uaccess.h>

#if defined(CHARDEV_VARIANT_SAFE)
#define CHARDEV_VARIANT "safe"
#elif defined(CHARDEV_VARIANT_CLASSIC)
#define CHARDEV_VARIANT "classic"
#elif defined(CHARDEV_VARIANT_CRASH)
#define CHARDEV_VARIANT "crash"
#else
#error "build with make VARIANT=safe|classic|crash (defines CHARDEV_VARIANT_*)"
#endif

#define DEVICE_NAME "chardev"	/* the name shown in /proc/devices */
#define MSG_LEN 64		/* "I already told you 4294967295 times Hello world!\n" fits */

static int major;		/* given by register_chrdev(0, ...) */

/*
 * 0 when the device is free, 1 while a process has it open.
 *
 * The classic example used a plain "static int Device_Open" and did
 * "if (Device_Open) return -EBUSY; Device_Open++;". That test and the
 * increment are two steps: two processes opening at the same moment can both
 * see 0 and both get in. atomic_cmpxchg() does the test and the set as one
 * indivisible step, so exactly one opener wins.
 */
static atomic_t already_open = ATOMIC_INIT(0);

/* Only touched by the single process that holds already_open. */
static unsigned int times_opened;
static char msg[MSG_LEN];
static size_t msg_len;

static int chardev_open(struct inode *inode, struct file *file)
{
	if (atomic_cmpxchg(&already_open, 0, 1) != 0)
		return -EBUSY;

#ifdef CHARDEV_VARIANT_CLASSIC
	/*
	 * Pin the module by hand while the file is open; module_put() in
	 * chardev_release() drops the reference. It fails if an unload has
	 * already begun.
	 */
	if (!try_module_get(THIS_MODULE)) {
		atomic_set_release(&already_open, 0);
		return -ENODEV;
	}
#endif

	/* Print, then count: the first open says 0, as the article's module does. */
	msg_len = scnprintf(msg, sizeof(msg),
			    "I already told you %u times Hello world!\n",
			    times_opened++);
	return 0;
}

static int chardev_release(struct inode *inode, struct file *file)
{
	/* Release ordering: our writes above are seen by the next opener. */
	atomic_set_release(&already_open, 0);

#ifdef CHARDEV_VARIANT_CLASSIC
	module_put(THIS_MODULE);
#endif
	return 0;
}

static ssize_t chardev_read(struct file *file, char __user *buf,
			    size_t count, loff_t *ppos)
{
	/* Copies from *ppos on, advances *ppos, returns 0 at the end. */
	return simple_read_from_buffer(buf, count, ppos, msg, msg_len);
}

static ssize_t chardev_write(struct file *file, const char __user *buf,
			     size_t count, loff_t *ppos)
{
	pr_notice_ratelimited("writing is not supported\n");
	return -EINVAL;
}

static const struct file_operations chardev_fops = {
#ifdef CHARDEV_VARIANT_SAFE
	/*
	 * The kernel takes a module reference for each open file and drops it
	 * after release() has returned, so the module cannot be unloaded
	 * while its code may still run.
	 */
	.owner = THIS_MODULE,
#endif
	/*
	 * classic: no .owner, the references come from open()/release().
	 * crash: no .owner and no references at all.
	 */
	.open = chardev_open,
	.release = chardev_release,
	.read = chardev_read,
	.write = chardev_write,
};

static int __init chardev_init(void)
{
	int ret;

	ret = register_chrdev(0, DEVICE_NAME, &chardev_fops);
	if (ret < 0) {
		pr_err("register_chrdev failed: %d\n", ret);
		return ret;
	}
	major = ret;

	/* Scripts should read the major from /proc/devices, not from here. */
	pr_info("variant %s loaded, major %d\n", CHARDEV_VARIANT, major);
	return 0;
}

static void __exit chardev_exit(void)
{
	unregister_chrdev(major, DEVICE_NAME);
	pr_info("variant %s unloaded\n", CHARDEV_VARIANT);
}

module_init(chardev_init);
module_exit(chardev_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("chardev-lab");
MODULE_DESCRIPTION("Hello-world character device for the chardev lab (variant " CHARDEV_VARIANT ")");
MODULE_INFO(variant, CHARDEV_VARIANT);
/*
 * The variant is part of the version because modpost's srcversion hashes
 * the source file only, not the compiler flags: every variant has the same
 * srcversion. /sys/module/chardev/version then tells which build is loaded.
 */
MODULE_VERSION("1.0-" CHARDEV_VARIANT);
