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
 * The workloads, all with O_DIRECT so that the page cache is out of the way, mirror
 * Keel's own (kernel-bin/src/blkbench.rs, app=blkbench) request for request:
 *   seq-read-4k        the whole device, 4 KiB pread()s in order (as dd iflag=direct)
 *   seq-read-64k       the whole device, 64 KiB pread()s in order
 *   rand-read-4k-qd1   R 4 KiB pread()s at uniformly random 4 KiB-aligned offsets by one
 *                      thread, the offsets from xorshift64* seeded with SEED
 *   rand-read-4k-qd16  R reads by 16 threads (thread t pinned to CPU t % CPUs, doing
 *                      R / 16 reads, one more when t < R % 16, seeded with SEED + t)
 * and one more, which Keel has no counterpart for yet:
 *   rand-read-4k-qd16-aio  R reads from one thread through Linux AIO (io_submit) with
 *                      16 in flight, seeded with SEED (as fio --ioengine=libaio
 *                      --direct=1 --iodepth=16)
 * R is RANDOM_READS_DEFAULT unless the kernel command line says blkbench.random_reads=N
 * (Keel reads the same option). A generator state s starts at seed | 1 and steps
 * s ^= s >> 12; s ^= s << 25; s ^= s >> 27; its output s * 0x2545F4914F6CDD1D, modulo
 * the device's 4 KiB blocks, picks the block. Linux AIO is called through raw syscalls:
 * no libaio needed in the initramfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
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

#define RANDOM_READS_DEFAULT 8192
#define SEED 0x5eed
#define BLOCK 4096
#define MAX_DEPTH 16

static uint64_t random_reads_count = RANDOM_READS_DEFAULT;

/* xorshift64*, as Keel's blkbench: the state starts at seed | 1. */
static uint64_t next_random(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
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

static void arm(struct iocb *iocb, int fd, void *buffer, uint64_t blocks, unsigned slot,
                uint64_t *state) {
    memset(iocb, 0, sizeof *iocb);
    iocb->aio_data = slot;
    iocb->aio_lio_opcode = IOCB_CMD_PREAD;
    iocb->aio_fildes = (uint32_t)fd;
    iocb->aio_buf = (uint64_t)(uintptr_t)buffer;
    iocb->aio_nbytes = BLOCK;
    iocb->aio_offset = (int64_t)((next_random(state) % blocks) * BLOCK);
}

static int aio_random_reads(int fd, uint64_t size, unsigned depth, const char *name,
                            char *buffers) {
    const uint64_t total = random_reads_count;
    uint64_t blocks = size / BLOCK;
    aio_context_t context = 0;
    struct iocb iocbs[MAX_DEPTH];
    struct iocb *pointers[MAX_DEPTH];
    struct io_event events[MAX_DEPTH];
    if (io_setup_(depth, &context) < 0)
        return fail("io_setup", name);
    uint64_t state = SEED | 1;
    uint64_t start = now_ns();
    uint64_t submitted = 0, completed = 0;
    for (unsigned slot = 0; slot < depth && submitted < total; slot++, submitted++) {
        arm(&iocbs[slot], fd, buffers + (size_t)slot * BLOCK, blocks, slot, &state);
        pointers[slot] = &iocbs[slot];
    }
    if (io_submit_(context, (long)submitted, pointers) != (long)submitted)
        return fail("io_submit", name);
    while (completed < total) {
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
            if (submitted < total) {
                unsigned slot = (unsigned)events[i].data;
                arm(&iocbs[slot], fd, buffers + (size_t)slot * BLOCK, blocks, slot, &state);
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

/* One reader: `reads` 4 KiB preads at random blocks, seeded with `seed`. */
struct reader {
    int fd;
    uint64_t blocks;
    uint64_t reads;
    uint64_t seed;
    int cpu;
    char *buffer;
    int error; /* errno of the first failure, 0 when all reads succeeded */
};

static void *read_randomly(void *argument) {
    struct reader *reader = argument;
    if (reader->cpu >= 0) {
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(reader->cpu, &cpus);
        pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus);
    }
    uint64_t state = reader->seed | 1;
    for (uint64_t i = 0; i < reader->reads; i++) {
        off_t offset = (off_t)((next_random(&state) % reader->blocks) * BLOCK);
        ssize_t got = pread(reader->fd, reader->buffer, BLOCK, offset);
        if (got != BLOCK) {
            reader->error = got < 0 ? errno : EIO;
            return NULL;
        }
    }
    return NULL;
}

static int threaded_random_reads(int fd, uint64_t size, unsigned threads, const char *name,
                                 char *buffers) {
    struct reader readers[MAX_DEPTH];
    pthread_t handles[MAX_DEPTH];
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const uint64_t total = random_reads_count;
    uint64_t start = now_ns();
    for (unsigned t = 0; t < threads; t++) {
        readers[t] = (struct reader){
            .fd = fd,
            .blocks = size / BLOCK,
            .reads = total / threads + (t < total % threads),
            .seed = SEED + t,
            .cpu = threads > 1 && cpus > 0 ? (int)(t % (unsigned)cpus) : -1,
            .buffer = buffers + (size_t)t * BLOCK,
            .error = 0,
        };
    }
    if (threads == 1) {
        read_randomly(&readers[0]);
    } else {
        for (unsigned t = 0; t < threads; t++) {
            int error = pthread_create(&handles[t], NULL, read_randomly, &readers[t]);
            if (error != 0) {
                errno = error;
                return fail("pthread_create", name);
            }
        }
        for (unsigned t = 0; t < threads; t++)
            pthread_join(handles[t], NULL);
    }
    uint64_t ns = now_ns() - start;
    for (unsigned t = 0; t < threads; t++) {
        if (readers[t].error != 0) {
            errno = readers[t].error;
            return fail("pread", name);
        }
    }
    report(name, total, total * BLOCK, ns);
    return 0;
}

/* blkbench.random_reads=N from the kernel command line, if present. */
static void read_options(void) {
    char line[4096];
    FILE *file = fopen("/proc/cmdline", "r");
    if (file == NULL)
        return;
    if (fgets(line, sizeof line, file) != NULL) {
        char *found = strstr(line, "blkbench.random_reads=");
        if (found != NULL) {
            unsigned long long value = strtoull(found + strlen("blkbench.random_reads="), NULL, 0);
            if (value > 0)
                random_reads_count = value;
        }
    }
    fclose(file);
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
    read_options();
    printf("keel-blk-device path=%s bytes=%llu random_reads=%llu seed=%#x\n", argv[1],
           (unsigned long long)size, (unsigned long long)random_reads_count, SEED);
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
        threaded_random_reads(fd, size, 1, "rand-read-4k-qd1", buffers) != 0 ||
        threaded_random_reads(fd, size, 16, "rand-read-4k-qd16", buffers) != 0 ||
        aio_random_reads(fd, size, 16, "rand-read-4k-qd16-aio", buffers) != 0)
        return 1;
    printf("keel-blk-done\n");
    fflush(stdout);
    return 0;
}
