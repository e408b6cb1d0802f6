/*
 * microbench - measures the common core against the obvious alternatives in
 * one run on one machine, so the ratios hold even on a shared, noisy box:
 * the timing wheel against a binary-heap timer queue, the buffer pool
 * against malloc/free.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bm_buf.h"
#include "bm_wheel.h"
#include "im_config.h"

typedef struct {
    int64_t timers;
    int64_t buf_iters;
    const char *only;
} bm_micro_config_t;

static const im_cfg_opt_t opts[] = {
    {"timers", 'n', IM_CFG_INT, offsetof(bm_micro_config_t, timers), "1000000", 1, 100000000,
     "timers held by the wheel and the heap"},
    {"buf-iters", 'i', IM_CFG_INT, offsetof(bm_micro_config_t, buf_iters), "5000000", 1,
     1000000000, "alloc/free iterations for the buffer pool"},
    {"only", 0, IM_CFG_STR, offsetof(bm_micro_config_t, only), "all", 0, 0,
     "run one part: all, wheel or buf"},
};

static const im_cfg_spec_t spec = {
    "microbench", "Timing wheel vs binary heap and buffer pool vs malloc, measured in one run.",
    "IM_MICROBENCH", opts, sizeof(opts) / sizeof(opts[0])};

int main(int argc, char **argv)
{
    bm_micro_config_t cfg;
    char err[256];
    im_err_t rc = im_cfg_parse(&spec, &cfg, argc, argv, NULL, err, sizeof(err));
    int all;

    if (rc == IM_EHELP) {
        im_cfg_usage(&spec, stdout);
        return 0;
    }
    if (rc != IM_OK) {
        fprintf(stderr, "microbench: %s\n", err);
        return 2;
    }
    all = strcmp(cfg.only, "all") == 0;
    if (!all && strcmp(cfg.only, "wheel") != 0 && strcmp(cfg.only, "buf") != 0) {
        fprintf(stderr, "microbench: --only must be all, wheel or buf\n");
        return 2;
    }
    if (all || strcmp(cfg.only, "wheel") == 0)
        bm_wheel_run(stdout, (size_t)cfg.timers);
    if (all || strcmp(cfg.only, "buf") == 0)
        bm_buf_run(stdout, (size_t)cfg.buf_iters);
    return 0;
}
