/*
 * bm_sys.h - what /proc says about a process or the machine: resident memory,
 * CPU time, available memory.  For the load tool's report (the gateway's
 * memory per connection, which process ran out of CPU).  Any thread.
 */
#ifndef BM_SYS_H
#define BM_SYS_H

#include <stdint.h>
#include <sys/types.h>

/* VmRSS of pid (0: this process) in bytes; 0 if it cannot be read. */
uint64_t bm_sys_rss(pid_t pid);

/* User + system CPU time of pid (0: this process) in nanoseconds, all its
 * threads; 0 if it cannot be read. */
uint64_t bm_sys_cpu_ns(pid_t pid);

/* The command name of pid into buf ("" if it is gone).  Returns buf. */
char *bm_sys_comm(pid_t pid, char *buf, size_t cap);

/* MemAvailable of the machine in bytes (kernel socket memory included). */
uint64_t bm_sys_mem_available(void);

/* Busy and total CPU time of the whole machine so far, in clock ticks (all
 * cores: busy/total of a window is the machine's utilisation). */
void bm_sys_machine_cpu(uint64_t *busy, uint64_t *total);

/* Memory the kernel holds in TCP socket buffers (/proc/net/sockstat "TCP mem"),
 * in bytes. */
uint64_t bm_sys_tcp_mem(void);

/* The 1-minute load average, -1 if unknown. */
double bm_sys_loadavg(void);

/* The open-files limit, raised to the hard limit first if it is lower. */
uint64_t bm_sys_raise_nofile(void);

#endif
