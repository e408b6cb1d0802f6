/*
 * gw_session.h - the gateway's table of WebSocket sessions: slot+generation
 * ids, an index of each user's local sessions (one per device), and each
 * session's bounded queue of outbound frames.  Plain C with no sockets, so it
 * is unit-tested on its own (tests/gateway/test_gw_session.c).
 *
 * Session ids: the low 32 bits are a slot index, the high 32 bits the slot's
 * generation, which changes every time the slot is freed.  An id therefore
 * names one connection forever: a reply that arrives (from another thread,
 * through gw_post) after its connection closed finds a different generation
 * in the slot and is dropped, even when the slot has been reused.  Ids are
 * never 0.  Freed slots are reused before the table grows, so the table's
 * size follows the peak number of connections.
 *
 * User index: an open-addressing hash map from user id (non-zero, as im_jwt
 * guarantees) to the head of a doubly linked list threaded through the
 * sessions, so adding, removing and listing a user's sessions cost O(1) plus
 * the length of that list.
 *
 * Outbound queue: a ring of im_buf_t references that starts empty and grows by
 * doubling up to the limit the caller passes, so an idle connection holds no
 * queue memory and a busy one never reallocates once grown.
 *
 * Ownership: the table allocates and frees the gw_session_t structs; a session
 * never moves in memory while it exists (the caller embeds timers in it).
 * Threads: everything here belongs to the gateway's event-loop thread.
 */
#ifndef GW_SESSION_H
#define GW_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "gw_rate.h"
#include "im_buf.h"
#include "im_err.h"
#include "im_jwt.h"
#include "im_wheel.h"

/* Why a session ended, for the closes counter (gw_metrics.h has the names). */
typedef enum {
    GW_CLOSE_NONE = 0, /* still open */
    GW_CLOSE_PEER,     /* the client sent a close frame */
    GW_CLOSE_DROPPED,  /* the TCP connection ended without a close handshake */
    GW_CLOSE_SHUTDOWN, /* 1001: the gateway is stopping */
    GW_CLOSE_IDLE,     /* 1000: nothing received for idle-timeout */
    GW_CLOSE_SLOW,     /* 1008: send queue full */
    GW_CLOSE_TOO_BIG,  /* 1009: message above max-frame */
    GW_CLOSE_BAD_UTF8, /* 1007: invalid UTF-8 in a text message */
    GW_CLOSE_BINARY,   /* 1003: binary message */
    GW_CLOSE_RATE,     /* 1008: sustained rate-limit violation */
    GW_CLOSE_KICKED,   /* closed through gw_session_close() */
    GW_CLOSE__COUNT
} gw_close_kind_t;

typedef struct gw_session_s gw_session_t;

struct gw_session_s {
    uint64_t id;
    uint64_t user_id;
    void *conn; /* the io layer's connection; not used by the table */
    gw_session_t *user_next, *user_prev;

    /* Outbound ring: q[(q_head + i) % q_cap] for i < q_len, each one reference. */
    im_buf_t **q;
    uint32_t q_head, q_len, q_cap;

    /* State the gateway keeps per connection (gw.c, gw_io.c, gw_frame.c). */
    im_timer_t timer;      /* pings a quiet peer, closes a silent one (gw.c) */
    uint64_t last_rx_ms;   /* when the peer last sent anything */
    gw_bucket_t bucket;    /* inbound message rate */
    char *rx;              /* reassembly of a fragmented message */
    size_t rx_len, rx_cap;
    uint16_t close_code;    /* what we send in our close frame */
    uint8_t close_kind;     /* gw_close_kind_t */
    uint8_t closing : 1;    /* a close is under way: send nothing more */
    uint8_t close_sent : 1; /* our close frame is out: waiting for the reply */
    uint8_t ping_due : 1;   /* the next writable callback sends a ping */
    char *close_reason;     /* UTF-8, at most GW_CLOSE_REASON_MAX bytes; NULL until a close */
    /* The table's data_size bytes for its user (zeroed), in the same allocation. */
    _Alignas(max_align_t) unsigned char data[];
};

#define GW_CLOSE_REASON_MAX 63 /* at most 123 bytes fit a close frame */

typedef struct gw_slot_s {
    uint32_t gen; /* generation of the id the slot holds or will hold next */
    uint32_t next_free;
    gw_session_t *s; /* NULL when free */
} gw_slot_t;

typedef struct gw_user_entry_s {
    uint64_t user_id; /* 0: empty */
    gw_session_t *head;
} gw_user_entry_t;

typedef struct gw_sessions_s {
    gw_slot_t *slots;
    uint32_t nslots, cap_slots;
    uint32_t free_head; /* UINT32_MAX: no free slot */
    size_t count;       /* live sessions */
    gw_user_entry_t *users;
    size_t users_cap;   /* power of two (or 0) */
    size_t users_count; /* distinct users with at least one session */
    size_t data_size;   /* bytes of each session's data[]; set before the first add */
} gw_sessions_t;

/* An empty table (data_size 0); allocates nothing until the first add. */
void gw_sessions_init(gw_sessions_t *t);

/* Frees every remaining session (dropping their queued buffers and rx
 * buffers) and the table's memory.  Timers embedded in sessions must have
 * been cancelled by the caller. */
void gw_sessions_destroy(gw_sessions_t *t);

/* A new zeroed session for user_id (non-zero) with a fresh id, linked into
 * the user's list.  Never NULL (allocation failure aborts, im_alloc.h). */
gw_session_t *gw_sessions_add(gw_sessions_t *t, uint64_t user_id);

/* Unlinks s, retires its id (the slot's generation changes), drops its queued
 * buffers and rx buffer, and frees it.  s must not be used afterwards.  The
 * caller cancels s's timers first.  gw_sessions_unlink + gw_session_free. */
void gw_sessions_remove(gw_sessions_t *t, gw_session_t *s);

/* The first half of gw_sessions_remove: s is no longer in the table (its id
 * is retired) but still allocated, data and all, until gw_session_free. */
void gw_sessions_unlink(gw_sessions_t *t, gw_session_t *s);
void gw_session_free(gw_session_t *s);

/* The live session with this id, or NULL (never existed, closed, reused). */
gw_session_t *gw_sessions_get(const gw_sessions_t *t, uint64_t id);

/* The first of user_id's sessions (most recent first), NULL if none; follow
 * ->user_next for the others.  Do not remove sessions while walking. */
gw_session_t *gw_sessions_user_first(const gw_sessions_t *t, uint64_t user_id);

/* Live sessions / distinct users. */
size_t gw_sessions_count(const gw_sessions_t *t);
size_t gw_sessions_users(const gw_sessions_t *t);

/* Walk every live session: start with *pos = 0; returns NULL at the end. */
gw_session_t *gw_sessions_next(const gw_sessions_t *t, uint32_t *pos);

/* Appends b to s's queue, taking over the caller's reference.  IM_EFULL (b
 * not taken) when max buffers are queued already.  max > 0. */
im_err_t gw_sendq_push(gw_session_t *s, im_buf_t *b, uint32_t max);

/* The oldest queued buffer without removing it, or NULL. */
im_buf_t *gw_sendq_peek(const gw_session_t *s);

/* Removes the oldest buffer and drops its reference.  No-op when empty. */
void gw_sendq_drop_head(gw_session_t *s);

/* Drops every queued buffer and frees the ring. */
void gw_sendq_clear(gw_session_t *s);

static inline uint32_t gw_sendq_len(const gw_session_t *s)
{
    return s->q_len;
}

#endif
