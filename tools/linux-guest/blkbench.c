/*
 * blkbench: the block workloads of `cargo xtask bench blk`, run inside the Linux guest
 * that Keel is compared against (tools/xtask/src/linux_guest.rs builds it with
 * `gcc -static` into the guest's initramfs).
 *
 *   blkbench DEVICE    runs the four workloads on DEVICE (the guest's /dev/vda) and
 *                      prints one line per workload on stdout (the serial console):
 *                        keel-blk-result workload=NAME ops=N bytes=N ns=N
 *                      where ns is the guest's CLOCK_MONOTONIC time for the whole
 *                      workload (emulated time under TCG). Exit status 0 on success.
 *   blkbench --exit N  writes N to isa-debug-exit (port 0xf4): QEMU exits (N << 1) | 1.
 *
 * The workloads, all with O_DIRECT so that the page cache is out of the way:
 *   seq-read-4k        the whole device, 4 KiB pread()s in order (as dd iflag=direct)
 *   seq-read-64k       the whole device, 64 KiB pread()s in order
 *   rand-read-4k-qd1   RANDOM_READS 4 KiB reads at uniformly random 4 KiB-aligned
 *                      offsets, one in flight, through Linux AIO (io_submit)
 *   rand-read-4k-qd16  the same with 16 in flight (as fio --ioengine=libaio
 *                      --direct=1 --iodepth=16)
 * The random offsets come from xorshift64 with a fixed seed, so every run (and Keel's
 * side of the bench, if it uses the same generator) reads the same blocks in the same
 * order: offset = (next() % (size / 4096)) * 4096, the generator starting at SEED.
 * Linux AIO is called through raw syscalls: no libaio needed in the initramfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RANDOM_READS 16384
#define SEED 0x9e3779b97f4a7c15ULL
#define BLOCK 4096
#define MAX_DEPTH 16

static uint64_t rng_state;

static uint64_t next_random(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static void report(const char *name, uint64_t ops, uint64_t bytes, uint64_t ns) {
    printf("keel-blk-result workload=%s ops=%llu bytes=%llu ns=%llu\n", name,
           (unsigned long long)ops, (unsigned long long)bytes, (unsigned long long)ns);
    fflush(stdout);
}

static int fail(const char *what, const char *name) {
    printf("keel-blk-error workload=%s %s: %s\n", name, what, strerror(errno));
    fflush(stdout);
    return -1;
}

static int sequential(int fd, uint64_t size, size_t request, const char *name, void *buffer) {
    uint64_t start = now_ns();
    uint64_t ops = 0;
    for (uint64_t offset = 0; offset + request <= size; offset += request) {
        ssize_t got = pread(fd, buffer, request, (off_t)offset);
        if (got != (ssize_t)request) {
            if (got >= 0)
                errno = EIO;
            return fail("pread", name);
        }
        ops++;
    }
    uint64_t ns = now_ns() - start;
    report(name, ops, ops * request, ns);
    return 0;
}

static long io_setup_(unsigned n, aio_context_t *context) {
    return syscall(SYS_io_setup, n, context);
}
static long io_destroy_(aio_context_t context) { return syscall(SYS_io_destroy, context); }
static long io_submit_(aio_context_t context, long n, struct iocb **iocbs) {
    return syscall(SYS_io_submit, context, n, iocbs);
}
static long io_getevents_(aio_context_t context, long min, long max, struct io_event *events) {
    return syscall(SYS_io_getevents, context, min, max, events, NULL);
}

static void arm(struct iocb *iocb, int fd, void *buffer, uint64_t blocks, unsigned slot) {
    memset(iocb, 0, sizeof *iocb);
    iocb->aio_data = slot;
    iocb->aio_lio_opcode = IOCB_CMD_PREAD;
    iocb->aio_fildes = (uint32_t)fd;
    iocb->aio_buf = (uint64_t)(uintptr_t)buffer;
    iocb->aio_nbytes = BLOCK;
    iocb->aio_offset = (int64_t)((next_random() % blocks) * BLOCK);
}

static int random_reads(int fd, uint64_t size, unsigned depth, const char *name, char *buffers) {
    uint64_t blocks = size / BLOCK;
    aio_context_t context = 0;
    struct iocb iocbs[MAX_DEPTH];
    struct iocb *pointers[MAX_DEPTH];
    struct io_event events[MAX_DEPTH];
    if (io_setup_(depth, &context) < 0)
        return fail("io_setup", name);
    rng_state = SEED;
    uint64_t start = now_ns();
    uint64_t submitted = 0, completed = 0;
    for (unsigned slot = 0; slot < depth && submitted < RANDOM_READS; slot++, submitted++) {
        arm(&iocbs[slot], fd, buffers + (size_t)slot * BLOCK, blocks, slot);
        pointers[slot] = &iocbs[slot];
    }
    if (io_submit_(context, (long)submitted, pointers) != (long)submitted)
        return fail("io_submit", name);
    while (completed < RANDOM_READS) {
        long got = io_getevents_(context, 1, depth, events);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return fail("io_getevents", name);
        }
        long again = 0;
        for (long i = 0; i < got; i++) {
            if (events[i].res != BLOCK) {
                errno = events[i].res < 0 ? (int)-events[i].res : EIO;
                return fail("read", name);
            }
            completed++;
            if (submitted < RANDOM_READS) {
                unsigned slot = (unsigned)events[i].data;
                arm(&iocbs[slot], fd, buffers + (size_t)slot * BLOCK, blocks, slot);
                pointers[again++] = &iocbs[slot];
                submitted++;
            }
        }
        if (again > 0 && io_submit_(context, again, pointers) != again)
            return fail("io_submit", name);
    }
    uint64_t ns = now_ns() - start;
    io_destroy_(context);
    report(name, completed, completed * BLOCK, ns);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--exit") == 0) {
        if (ioperm(0xf4, 4, 1) != 0) {
            perror("blkbench: ioperm(0xf4)");
            return 1;
        }
        outl((unsigned)strtoul(argv[2], NULL, 0), 0xf4);
        return 1; /* not reached when isa-debug-exit is present */
    }
    if (argc != 2) {
        fprintf(stderr, "usage: blkbench DEVICE | blkbench --exit CODE\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0) {
        fail("open", argv[1]);
        return 1;
    }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
        /* Not a block device (a disk image, when trying this on the host). */
        off_t end = lseek(fd, 0, SEEK_END);
        if (end < 0) {
            fail("size", argv[1]);
            return 1;
        }
        size = (uint64_t)end;
    }
    printf("keel-blk-device path=%s bytes=%llu random_reads=%d seed=%llu\n", argv[1],
           (unsigned long long)size, RANDOM_READS, (unsigned long long)SEED);
    fflush(stdout);
    if (size < 65536) {
        printf("keel-blk-error device %s has only %llu bytes\n", argv[1], (unsigned long long)size);
        return 1;
    }
    char *buffers = aligned_alloc(BLOCK, (size_t)MAX_DEPTH * BLOCK);
    if (buffers == NULL) {
        fail("aligned_alloc", argv[1]);
        return 1;
    }
    if (sequential(fd, size, 4096, "seq-read-4k", buffers) != 0 ||
        sequential(fd, size, 65536, "seq-read-64k", buffers) != 0 ||
        random_reads(fd, size, 1, "rand-read-4k-qd1", buffers) != 0 ||
        random_reads(fd, size, 16, "rand-read-4k-qd16", buffers) != 0)
        return 1;
    printf("keel-blk-done\n");
    fflush(stdout);
    return 0;
}
