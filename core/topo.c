/*
 * Topology: group ranks into nodes by key, and find where this process
 * runs (node key, NUMA node, nearest RDMA NIC and its rate).
 */
#define _GNU_SOURCE /* sched_getcpu, qsort_r */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#include <numa.h>

#include "log.h"
#include "topo.h"

/* ---- grouping ----------------------------------------------------------- */

typedef struct {
    const char *keys;
    size_t key_len;
} key_table_t;

/* Order ranks by key, then by rank, so equal keys sit together with their
 * lowest rank first. */
static int by_key_then_rank(const void *a, const void *b, void *arg)
{
    const key_table_t *t = arg;
    int ra = *(const int *)a, rb = *(const int *)b;
    int c = strcmp(t->keys + (size_t)ra * t->key_len,
                   t->keys + (size_t)rb * t->key_len);
    if (c != 0)
        return c;
    return (ra > rb) - (ra < rb);
}

static mox_status_t check_group_args(const char *keys, size_t key_len,
                                     int size, const mox__topo_t *topo)
{
    if (keys == NULL || topo == NULL || size < 1 || key_len == 0)
        return MOX_ERR_INVALID_ARG;
    if ((size_t)size > SIZE_MAX / key_len)
        return MOX_ERR_OVERFLOW;
    for (int r = 0; r < size; r++)
        if (memchr(keys + (size_t)r * key_len, '\0', key_len) == NULL) {
            MOX_ERROR("topo", "node key of rank %d is not NUL-terminated "
                      "within %zu bytes", r, key_len);
            return MOX_ERR_INVALID_ARG;
        }
    return MOX_OK;
}

/* leader[r] = lowest rank whose key equals rank r's key. */
static mox_status_t find_leaders(const char *keys, size_t key_len, int size,
                                 int *leader)
{
    int *order = malloc((size_t)size * sizeof(*order));
    if (order == NULL)
        return MOX_ERR_NO_MEMORY;
    for (int r = 0; r < size; r++)
        order[r] = r;
    key_table_t t = {keys, key_len};
    qsort_r(order, (size_t)size, sizeof(*order), by_key_then_rank, &t);
    for (int i = 0; i < size; i++) {
        int r = order[i];
        int starts_node =
            i == 0 || strcmp(keys + (size_t)order[i - 1] * key_len,
                             keys + (size_t)r * key_len) != 0;
        leader[r] = starts_node ? r : leader[order[i - 1]];
    }
    free(order);
    return MOX_OK;
}

/* Number nodes by lowest rank and fill node_of, local_of and the CSR. */
static mox_status_t fill_nodes(mox__topo_t *t, const int *leader)
{
    int n = 0;
    for (int r = 0; r < t->size; r++)
        if (leader[r] == r)
            t->node_of[r] = n++;
    t->num_nodes = n;
    t->node_off = calloc((size_t)n + 1, sizeof(*t->node_off));
    if (t->node_off == NULL)
        return MOX_ERR_NO_MEMORY;
    for (int r = 0; r < t->size; r++) {
        t->node_of[r] = t->node_of[leader[r]];
        t->local_of[r] = t->node_off[t->node_of[r] + 1]++;
    }
    for (int i = 0; i < n; i++)
        t->node_off[i + 1] += t->node_off[i];
    for (int r = 0; r < t->size; r++)
        t->node_ranks[t->node_off[t->node_of[r]] + t->local_of[r]] = r;
    return MOX_OK;
}

mox_status_t mox__topo_group(const char *keys, size_t key_len, int size,
                             mox__topo_t *topo)
{
    mox_status_t st = check_group_args(keys, key_len, size, topo);
    if (st != MOX_OK)
        return st;
    memset(topo, 0, sizeof(*topo));
    topo->size = size;
    topo->node_of = malloc((size_t)size * sizeof(int));
    topo->local_of = malloc((size_t)size * sizeof(int));
    topo->node_ranks = malloc((size_t)size * sizeof(int));
    int *leader = malloc((size_t)size * sizeof(int));
    st = MOX_ERR_NO_MEMORY;
    if (topo->node_of && topo->local_of && topo->node_ranks && leader) {
        st = find_leaders(keys, key_len, size, leader);
        if (st == MOX_OK)
            st = fill_nodes(topo, leader);
    }
    free(leader);
    if (st != MOX_OK)
        mox__topo_free(topo);
    return st;
}

void mox__topo_free(mox__topo_t *topo)
{
    if (topo == NULL)
        return;
    free(topo->node_of);
    free(topo->local_of);
    free(topo->node_off);
    free(topo->node_ranks);
    memset(topo, 0, sizeof(*topo));
}

/* ---- where this process runs -------------------------------------------- */

void mox__topo_node_key(const char *node_id_override, char *key,
                        size_t key_len)
{
    if (key == NULL || key_len == 0)
        return;
    if (node_id_override != NULL && node_id_override[0] != '\0') {
        snprintf(key, key_len, "%s", node_id_override);
        return;
    }
    char host[256] = "localhost";
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    /* Two containers on one host share a hostname but not /dev/shm; the
     * IPC namespace tells them apart. */
    struct stat sb;
    if (stat("/proc/self/ns/ipc", &sb) == 0)
        snprintf(key, key_len, "%s:%llu", host, (unsigned long long)sb.st_ino);
    else
        snprintf(key, key_len, "%s", host);
}

int mox__topo_numa_node(void)
{
    if (numa_available() < 0)
        return -1;
    int cpu = sched_getcpu();
    if (cpu < 0)
        return -1;
    int node = numa_node_of_cpu(cpu);
    return node < 0 ? -1 : node;
}

/* Parse sysfs .../ports/N/rate ("100 Gb/sec (4X EDR)", "2.5 Gb/sec ...")
 * into Mbit/s; 0 when malformed. Exposed for unit tests. */
int mox__topo_parse_ib_rate(const char *text)
{
    if (text == NULL)
        return 0;
    char *end = NULL;
    errno = 0;
    double gbps = strtod(text, &end);
    if (errno != 0 || end == text || gbps <= 0 || gbps > 1e6)
        return 0;
    while (*end == ' ')
        end++;
    if (strncmp(end, "Gb/sec", 6) != 0)
        return 0;
    return (int)(gbps * 1000.0 + 0.5);
}

/* Parse sysfs /sys/class/net/<if>/speed (Mbit/s; "-1" when the link is
 * down) into Mbit/s; 0 when unknown. Exposed for unit tests. */
int mox__topo_parse_net_speed(const char *text)
{
    if (text == NULL)
        return 0;
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || v <= 0 || v > INT_MAX)
        return 0;
    while (*end == ' ' || *end == '\n')
        end++;
    return *end == '\0' ? (int)v : 0;
}

/* First line of a sysfs file; 0 when unreadable. */
static int read_line(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    int ok = fgets(buf, (int)len, f) != NULL;
    fclose(f);
    if (ok)
        buf[strcspn(buf, "\n")] = '\0';
    return ok;
}

static int dev_numa_node(const char *dev)
{
    char path[512], line[32];
    snprintf(path, sizeof(path), "/sys/class/infiniband/%s/device/numa_node",
             dev);
    return read_line(path, line, sizeof(line)) ? atoi(line) : -1;
}

/* Rate of port 1 of an RDMA device; falls back to the speed of the network
 * interface behind it (RoCE, iWARP). */
static int dev_rate_mbps(const char *dev)
{
    char path[512], line[128];
    snprintf(path, sizeof(path), "/sys/class/infiniband/%s/ports/1/rate", dev);
    int rate = read_line(path, line, sizeof(line))
                   ? mox__topo_parse_ib_rate(line) : 0;
    if (rate > 0)
        return rate;
    snprintf(path, sizeof(path), "/sys/class/infiniband/%s/device/net", dev);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    struct dirent *e;
    while (rate == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char speed_path[512];
        snprintf(speed_path, sizeof(speed_path), "/sys/class/net/%s/speed",
                 e->d_name);
        if (read_line(speed_path, line, sizeof(line)))
            rate = mox__topo_parse_net_speed(line);
    }
    closedir(d);
    return rate;
}

void mox__topo_nic(int numa_node, char *name, size_t name_len, int *rate_mbps)
{
    if (name != NULL && name_len > 0)
        name[0] = '\0';
    if (rate_mbps != NULL)
        *rate_mbps = 0;
    int n = 0;
    struct ibv_device **devs = ibv_get_device_list(&n);
    if (devs == NULL || n <= 0) {
        MOX_DEBUG("topo", "no RDMA device found");
        if (devs != NULL)
            ibv_free_device_list(devs);
        return;
    }
    /* Prefer a device on our NUMA node; else the first one. */
    int pick = 0;
    for (int i = 0; i < n && numa_node >= 0; i++)
        if (dev_numa_node(ibv_get_device_name(devs[i])) == numa_node) {
            pick = i;
            break;
        }
    const char *dev = ibv_get_device_name(devs[pick]);
    if (name != NULL && name_len > 0)
        snprintf(name, name_len, "%s", dev);
    if (rate_mbps != NULL)
        *rate_mbps = dev_rate_mbps(dev);
    MOX_DEBUG("topo", "RDMA device %s (of %d) for NUMA node %d", dev, n,
              numa_node);
    ibv_free_device_list(devs);
}
