#include "bm_sys.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static FILE *proc_file(pid_t pid, const char *name)
{
    char path[64];

    if (pid == 0)
        snprintf(path, sizeof(path), "/proc/self/%s", name);
    else
        snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, name);
    return fopen(path, "r");
}

/* The number after key in a "Key:   123 kB" file, in bytes. */
static uint64_t kb_field(FILE *f, const char *key)
{
    char line[256];
    size_t klen = strlen(key);
    unsigned long long kb = 0;

    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && sscanf(line + klen, " %llu", &kb) == 1)
            break;
    }
    fclose(f);
    return (uint64_t)kb * 1024;
}

uint64_t bm_sys_rss(pid_t pid)
{
    return kb_field(proc_file(pid, "status"), "VmRSS:");
}

uint64_t bm_sys_mem_available(void)
{
    return kb_field(fopen("/proc/meminfo", "r"), "MemAvailable:");
}

uint64_t bm_sys_cpu_ns(pid_t pid)
{
    FILE *f = proc_file(pid, "stat");
    char buf[1024], *p;
    unsigned long long ut = 0, st = 0;
    long hz = sysconf(_SC_CLK_TCK);

    if (f == NULL)
        return 0;
    p = fgets(buf, sizeof(buf), f);
    fclose(f);
    /* The command name may hold spaces and parentheses: fields start after
     * the last ')'.  utime and stime are fields 14 and 15. */
    if (p == NULL || (p = strrchr(buf, ')')) == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2 ||
        hz <= 0)
        return 0;
    return (uint64_t)(ut + st) * (1000000000ull / (uint64_t)hz);
}

char *bm_sys_comm(pid_t pid, char *buf, size_t cap)
{
    FILE *f = proc_file(pid, "comm");

    buf[0] = '\0';
    if (f == NULL)
        return buf;
    if (fgets(buf, (int)cap, f))
        buf[strcspn(buf, "\n")] = '\0';
    fclose(f);
    return buf;
}

uint64_t bm_sys_raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (uint64_t)rl.rlim_cur;
}

void bm_sys_machine_cpu(uint64_t *busy, uint64_t *total)
{
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[10] = {0};

    *busy = *total = 0;
    if (f == NULL)
        return;
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
               &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) >= 8) {
        /* user nice system idle iowait irq softirq steal (guest is in user) */
        for (int i = 0; i < 8; i++)
            *total += v[i];
        *busy = *total - v[3] - v[4];
    }
    fclose(f);
}

uint64_t bm_sys_tcp_mem(void)
{
    FILE *f = fopen("/proc/net/sockstat", "r");
    char line[256];
    unsigned long long pages = 0;

    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        char *m = strstr(line, " mem ");
        if (strncmp(line, "TCP:", 4) == 0 && m != NULL)
            sscanf(m + 5, "%llu", &pages);
    }
    fclose(f);
    return (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE);
}

double bm_sys_loadavg(void)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double l = -1;

    if (f == NULL)
        return -1;
    if (fscanf(f, "%lf", &l) != 1)
        l = -1;
    fclose(f);
    return l;
}
