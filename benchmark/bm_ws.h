/*
 * bm_ws.h - internals of `benchmark`, the WebSocket load tool (bm_ws_*.c),
 * shared by its modules:
 *
 *   bm_ws_main.c    flags, the run's phases, process watching
 *   bm_ws_setup.c   users (REST register/login, or minted tokens) and groups
 *   bm_ws_client.c  the clients: the JSON protocol on top of bm_ws_io, pacing,
 *                   latency and correctness bookkeeping
 *   bm_ws_db.c      db mode: dbreport, and the writer's drain rate from MySQL
 *   bm_ws_report.c  text summary, --json, --csv
 *
 * Everything here runs on the one loop thread, except the set-up workers
 * (before the loop starts) and db mode's MySQL poller (bm_ws_db.c), which
 * shares only atomics.
 */
#ifndef BM_WS_H
#define BM_WS_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bm_hist.h"
#include "bm_ws_io.h"
#include "im_wheel.h"

typedef struct bm_cfg_s {
    int64_t connections;
    int64_t duration_ms;
    const char *gateways;
    const char *mode;
    int64_t group_size;
    int64_t senders;
    int64_t rate;
    int64_t inflight;
    int64_t size;
    int64_t ramp_ms;
    const char *sources;
    int json;
    const char *json_file;
    const char *csv;
    const char *auth;
    const char *jwt_secret;
    const char *state_dir;
    const char *users_file;
    const char *gateway_pids;
    const char *watch;
    int64_t connect_timeout_ms;
    int64_t ack_timeout_ms;
    int64_t drain_ms;
    int64_t setup_threads;
    const char *dbreport;
    int64_t db_rows;
    const char *tag;
    int progress;
} bm_cfg_t;

typedef enum { BM_DIRECT, BM_GROUP, BM_CONNECT, BM_IDLE, BM_DB } bm_mode_t;

typedef enum {
    BM_PH_SETUP,
    BM_PH_CONNECT, /* clients connecting, nothing sent */
    BM_PH_LOAD,    /* the measured window */
    BM_PH_DRAIN,   /* no new sends; waiting for acks and deliveries */
    BM_PH_CLOSE,   /* closing every connection */
    BM_PH_DONE
} bm_phase_t;

/* Client states. */
enum {
    CL_WAIT,       /* not started (ramp) */
    CL_CONNECTING, /* TCP + upgrade */
    CL_UPGRADED,   /* 101 received, waiting for {"type":"ready"} */
    CL_READY,
    CL_CLOSING,  /* our close sent */
    CL_TIMEDOUT, /* being aborted after a timeout (already counted) */
    CL_DOWN      /* no connection */
};

typedef struct bm_client_s {
    bm_ws_t ws;            /* first: the callbacks get &ws */
    im_timer_t timer;      /* ramp start, timeouts, send pacing, reconnect */
    uint64_t user;         /* user id */
    uint64_t t_start_ns;   /* start of the current connection attempt */
    uint64_t next_send_ns; /* pacing: when the next message is due */
    uint64_t last_seq;     /* highest conversation seq delivered here */
    uint32_t idx;
    uint32_t peer;     /* direct: the partner's index; group: the group's */
    uint32_t inflight; /* sends without ack or error */
    uint16_t gw;       /* index into the gateway list */
    uint16_t src;      /* index into the source address list */
    uint8_t state;
    uint8_t sender; /* sends during the load phase */
    uint8_t ever_ready;
} bm_client_t;

/* One sent message, indexed by its number (the cid and in the body). */
enum { MSG_SENT, MSG_ACKED, MSG_ERROR, MSG_TIMEOUT };
typedef struct bm_msg_s {
    uint64_t t_send_ns;
    uint32_t sender;
    uint32_t expected;  /* deliveries expected (recipients ready at send time) */
    uint32_t delivered; /* deliveries seen */
    uint8_t state;
    uint8_t late; /* acked after its ack timeout */
} bm_msg_t;

/* One second of the load (and drain) phase. */
typedef struct bm_row_s {
    double t;      /* seconds since the load phase began, at the end of the row */
    uint32_t open; /* connections ready */
    uint64_t sent, acked, delivered, errors, connects, stored;
    uint64_t ack_p50, ack_p99, e2e_p50, e2e_p99, conn_p50, conn_p99; /* ns */
} bm_row_t;

#define BM_KINDS_MAX 64
typedef struct bm_kind_s {
    char name[40];
    uint64_t count;
} bm_kind_t;

/* Counters by name (error kinds, frame types), in first-seen order. */
typedef struct bm_kinds_s {
    size_t n;
    bm_kind_t k[BM_KINDS_MAX];
    uint64_t other; /* kinds beyond BM_KINDS_MAX */
} bm_kinds_t;

#define BM_WATCH_MAX 96 /* a gateway with --workers counts each worker */
typedef struct bm_watch_s {
    char name[32];
    pid_t pid;
    int gateway;               /* its RSS per connection is reported */
    uint64_t cpu0, cpu1;       /* CPU ns at the start and end of the load phase */
    uint64_t rss0, rss1, rss2; /* before connecting, all connected, end of load */
} bm_watch_t;

typedef struct bm_db_s bm_db_t;

typedef struct bm_state_s {
    bm_cfg_t cfg;
    bm_mode_t mode;
    bm_phase_t phase;
    volatile int stop; /* SIGINT/SIGTERM */
    char run_tag[16];

    /* targets */
    size_t ngw, nsrc;
    struct sockaddr_in *gw, *src;
    char **gw_host; /* "host:port" for Host: */

    /* auth */
    const char *secret;
    char secret_from[300];
    char auth_desc[512];
    int minted;
    char **tokens; /* per client, NULL when minted */

    /* clients and groups */
    size_t n;
    bm_client_t *clients;
    size_t ngroups;
    uint64_t *group_ids;
    uint32_t *group_ready; /* members ready per group */
    uint32_t ready_now;

    bm_loop_t *loop;
    im_timer_t tick; /* per-second row */

    /* messages */
    bm_msg_t *msgs;
    size_t nmsgs, msgs_cap, scan; /* scan: ack-timeout cursor */
    char *frame;                  /* send frame scratch */
    size_t frame_cap;

    /* times (monotonic ns) */
    uint64_t t_setup0, t_connect0, t_connected, t_load0, t_load1, t_drain1, t_first_wave;
    uint64_t setup_ms;

    /* totals */
    uint64_t sent, acked, errored, timedout, late_acks, dup_acks, dup_flagged, skipped;
    uint64_t delivered, useful_deliveries, expected_acked, order_violations, order_max_back,
        foreign;
    uint64_t connects, upgraded, readies, cycles, closes_clean;
    uint64_t errors_total;
    uint64_t win_sent, win_acked, win_delivered; /* counted inside the load window */
    bm_hist_t h_connect, h_ready, h_ack, h_e2e;
    bm_kinds_t errors, frames;

    /* the current second */
    struct {
        uint64_t sent, acked, delivered, errors, connects;
        bm_hist_t ack, e2e, conn;
    } sec;
    bm_row_t *rows;
    size_t nrows, rows_cap;

    /* memory and CPU */
    size_t nwatch;
    bm_watch_t watch[BM_WATCH_MAX];
    uint64_t self_rss_base; /* before the client array */
    uint64_t self_rss0, self_rss1, self_cpu0, self_cpu1, avail0, avail1, tcpmem0, tcpmem1;
    uint64_t mach_busy0, mach_busy1, mach_total0, mach_total1;
    double load0, load1; /* 1-minute load average at the start and end of the load */
    uint32_t ready_at_rss1;
    uint64_t nofile;

    /* results computed at the end */
    uint64_t lost, lost_msgs, duplicates, unacked, delivered_unacked, delivered_errored;

    /* db mode */
    bm_db_t *db;
    char *dbreport_out;
    int dbreport_rc;
} bm_state_t;

extern bm_state_t B;

/* bm_ws_client.c */
extern const bm_ws_ops_t bm__client_ops;
void bm__client_init(bm_client_t *c, uint32_t idx);
/* Arms c's timer to start connecting in delay_ms. */
void bm__client_start(bm_client_t *c, uint64_t delay_ms);
/* Load phase begins: senders start their pacing. */
void bm__client_load(bm_client_t *c);
/* Closes c's connection (close handshake, bounded by a timer). */
void bm__client_close(bm_client_t *c);
/* Every second: the row, ack timeouts. */
void bm__tick_cb(im_timer_t *t, void *arg);
/* Starts the first second of the series afresh (the load phase begins). */
void bm__client_reset_second(void);
/* Records one occurrence of an error kind (and counts it in the second). */
void bm__error(const char *kind);
void bm__kind_add(bm_kinds_t *k, const char *name, uint64_t n);
/* Fills the correctness results from the message table. */
void bm__client_finish(void);
/* The ack/delivery work still outstanding (0: the drain can stop). */
uint64_t bm__client_pending(void);

/* bm_ws_setup.c: users, tokens and groups; 0 or -1 with a message on stderr. */
int bm__setup(void);
/* The token for client i (minted now, or the one from login) into buf. */
const char *bm__token(size_t i, char *buf, size_t cap);

/* bm_ws_db.c */
int bm__db_report(void);      /* runs dbreport, keeps its output */
int bm__db_start(void);       /* the MySQL poller thread */
uint64_t bm__db_stored(void); /* messages of this run stored so far */
void bm__db_stop(void);
void bm__db_json(void *jw); /* im_jw_t *: the "db" object's members */
void bm__db_text(void);

/* bm_ws_report.c */
void bm__report_text(void);
/* Writes the JSON report to out. */
int bm__report_json(FILE *out);
int bm__report_csv(const char *path);

/* bm_ws_main.c */
const char *bm__mode_name(bm_mode_t m);

#define BM_NS_PER_MS 1000000ull

#endif
