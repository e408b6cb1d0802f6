/*
 * im_amqp.c - the RabbitMQ adapter over rabbitmq-c 0.11 (see im_amqp.h).
 *
 * The only file that includes <amqp.h>.  A connection uses one channel; the
 * channel's "epoch" counts its incarnations (bumped when it is reopened and when
 * the connection is lost), which is how a publisher learns that the channel its
 * confirms were promised on is gone, whichever call noticed it first.
 */
#include "im_amqp.h"

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

#define CHANNEL            1
#define DEFAULT_PORT       5672
#define DEFAULT_TIMEOUT_MS 10000

struct im_amqp_conn_s {
    amqp_connection_state_t amqp; /* NULL while the connection is lost */
    char *host, *user, *password, *vhost, *name;
    unsigned port, heartbeat_s, timeout_ms;
    unsigned epoch;
    /* Confirm mode is a property of the channel, not of a publisher: a second
     * publisher on the same channel (after the first was freed) must continue
     * the broker's delivery-tag numbering, not restart it. */
    unsigned confirm_epoch;     /* epoch whose channel is in confirm mode; 0: none */
    uint64_t confirm_published; /* messages published on that channel so far */
    amqp_envelope_t env; /* the last delivery, owned until the next consumer_next */
    bool has_env;
    char err[512];
};

struct im_amqp_publisher_s {
    im_amqp_conn_t *conn;
    im_amqp_confirm_cb cb;
    void *arg;
    unsigned window;
    bool *pending;   /* [window], indexed by seqno % window */
    uint64_t next;   /* seqno of the next message */
    uint64_t oldest; /* lowest seqno not reported yet; == next when none */
    unsigned outstanding;
    unsigned epoch;      /* conn->epoch when confirms were enabled; 0: never */
    uint64_t tag_base;   /* seqno = tag_base + the broker's delivery tag */
    uint64_t sync_seqno; /* awaited by im_amqp_publish_sync; 0: none */
    im_err_t sync_result;
    bool sync_done;
};

/* ---------------------------------------------------------------- errors */

static void __attribute__((format(printf, 2, 3)))
set_err(im_amqp_conn_t *conn, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(conn->err, sizeof(conn->err), fmt, ap);
    va_end(ap);
    im_log_warn("amqp %s: %s", conn->name, conn->err);
}

/* Reply codes of channel.close, as in the header. */
static im_err_t reply_code_err(unsigned code)
{
    switch (code) {
    case AMQP_NOT_FOUND:
        return IM_ENOENT;
    case AMQP_ACCESS_REFUSED:
        return IM_EPERM;
    case AMQP_RESOURCE_LOCKED:
        return IM_EEXIST;
    case AMQP_PRECONDITION_FAILED:
        return IM_EINVAL;
    default:
        return IM_EIO;
    }
}

/* Library errors that mean the peer or the socket went away, as opposed to bytes
 * we could not make sense of. */
static im_err_t status_err(int status)
{
    switch (status) {
    case AMQP_STATUS_CONNECTION_CLOSED:
    case AMQP_STATUS_SOCKET_ERROR:
    case AMQP_STATUS_SOCKET_CLOSED:
    case AMQP_STATUS_HEARTBEAT_TIMEOUT:
    case AMQP_STATUS_TIMEOUT:
    case AMQP_STATUS_TCP_ERROR:
    case AMQP_STATUS_SSL_ERROR:
        return IM_ECLOSED;
    default:
        return IM_EIO;
    }
}

static void drop(im_amqp_conn_t *conn)
{
    if (conn->amqp == NULL)
        return;
    amqp_destroy_connection(conn->amqp);
    conn->amqp = NULL;
    conn->epoch++;
}

/* After a library error rabbitmq-c's state is not trustworthy: the connection is
 * dropped and only a reconnect revives it. */
static im_err_t lost(im_amqp_conn_t *conn, int status, const char *what)
{
    set_err(conn, "%s: %s; connection dropped", what, amqp_error_string2(status));
    drop(conn);
    return status_err(status);
}

static im_err_t connection_closed(im_amqp_conn_t *conn, const amqp_connection_close_t *m,
                                  const char *what)
{
    amqp_connection_close_ok_t ok = {0};
    unsigned code = m->reply_code;

    set_err(conn, "%s: connection closed by broker: %u %.*s", what, code, (int)m->reply_text.len,
            (const char *)m->reply_text.bytes);
    (void)amqp_send_method(conn->amqp, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    drop(conn);
    return code == AMQP_ACCESS_REFUSED ? IM_EAUTH : IM_ECLOSED;
}

static im_err_t check_reply(im_amqp_conn_t *conn, amqp_rpc_reply_t r, const char *what);

static im_err_t open_channel(im_amqp_conn_t *conn)
{
    im_err_t err;

    amqp_channel_open(conn->amqp, CHANNEL);
    err = check_reply(conn, amqp_get_rpc_reply(conn->amqp), "opening the channel");
    if (err == IM_OK)
        conn->epoch++;
    return err;
}

/* The broker closed our channel: acknowledge (it ignores everything else on the
 * channel until we do) and open it again, so one bad request does not cost the
 * connection.  Returns the error the reply code maps to. */
static im_err_t channel_closed(im_amqp_conn_t *conn, const amqp_channel_close_t *m,
                               const char *what)
{
    amqp_channel_close_ok_t ok = {0};
    unsigned code = m->reply_code;
    int rc;

    set_err(conn, "%s: channel closed by broker: %u %.*s", what, code, (int)m->reply_text.len,
            (const char *)m->reply_text.bytes);
    rc = amqp_send_method(conn->amqp, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    if (rc != AMQP_STATUS_OK) {
        lost(conn, rc, "acknowledging the channel close");
        return reply_code_err(code);
    }
    /* A failed reopen records its own reason and drops the connection; the caller
     * still learns why the channel went, and finds the connection closed. */
    (void)open_channel(conn);
    return reply_code_err(code);
}

static im_err_t check_reply(im_amqp_conn_t *conn, amqp_rpc_reply_t r, const char *what)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return IM_OK;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return lost(conn, r.library_error, what);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
            return channel_closed(conn, r.reply.decoded, what);
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
            return connection_closed(conn, r.reply.decoded, what);
        set_err(conn, "%s: unexpected method 0x%08x from broker; connection dropped", what,
                (unsigned)r.reply.id);
        drop(conn);
        return IM_EIO;
    default:
        set_err(conn, "%s: no reply; connection dropped", what);
        drop(conn);
        return IM_EIO;
    }
}

static im_err_t require_open(im_amqp_conn_t *conn)
{
    if (conn->amqp != NULL)
        return IM_OK;
    if (conn->err[0] == '\0')
        snprintf(conn->err, sizeof(conn->err), "connection is closed");
    return IM_ECLOSED;
}

/* ---------------------------------------------------------------- connection */

static struct timeval ms_to_tv(unsigned ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

    return tv;
}

static im_err_t login(im_amqp_conn_t *conn)
{
    amqp_table_entry_t entry;
    amqp_table_t props = {1, &entry};

    entry.key = amqp_cstring_bytes("connection_name");
    entry.value.kind = AMQP_FIELD_KIND_UTF8;
    entry.value.value.bytes = amqp_cstring_bytes(conn->name);
    return check_reply(conn,
                       amqp_login_with_properties(conn->amqp, conn->vhost, 0,
                                                  AMQP_DEFAULT_FRAME_SIZE, (int)conn->heartbeat_s,
                                                  &props, AMQP_SASL_METHOD_PLAIN, conn->user,
                                                  conn->password),
                       "login");
}

static im_err_t open_conn(im_amqp_conn_t *conn)
{
    struct timeval tv = ms_to_tv(conn->timeout_ms);
    amqp_socket_t *sock;
    im_err_t err;
    int rc;

    conn->amqp = amqp_new_connection();
    if (conn->amqp == NULL) {
        set_err(conn, "amqp_new_connection failed");
        return IM_ENOMEM;
    }
    sock = amqp_tcp_socket_new(conn->amqp);
    if (sock == NULL) {
        set_err(conn, "amqp_tcp_socket_new failed");
        err = IM_ENOMEM;
        goto fail;
    }
    rc = amqp_socket_open_noblock(sock, conn->host, (int)conn->port, &tv);
    if (rc != AMQP_STATUS_OK) {
        set_err(conn, "connecting to amqp://%s:%u: %s", conn->host, conn->port,
                amqp_error_string2(rc));
        err = IM_EUNAVAIL;
        goto fail;
    }
    /* Without these a broker that accepts TCP but never answers hangs us forever. */
    amqp_set_handshake_timeout(conn->amqp, &tv);
    amqp_set_rpc_timeout(conn->amqp, &tv);
    err = login(conn);
    if (err == IM_OK)
        err = open_channel(conn);
    if (err == IM_OK) {
        conn->err[0] = '\0';
        return IM_OK;
    }

fail:
    drop(conn);
    return err;
}

im_amqp_conn_t *im_amqp_connect(const im_amqp_config_t *cfg, char *err, size_t errlen)
{
    im_amqp_conn_t *conn = im_calloc(1, sizeof(*conn));

    conn->host = im_strdup(cfg->host);
    conn->user = im_strdup(cfg->user);
    conn->password = im_strdup(cfg->password);
    conn->vhost = im_strdup(cfg->vhost != NULL ? cfg->vhost : "/");
    conn->name = im_strdup(cfg->name != NULL ? cfg->name : "amqp");
    conn->port = cfg->port != 0 ? cfg->port : DEFAULT_PORT;
    conn->heartbeat_s = cfg->heartbeat_s;
    conn->timeout_ms = cfg->timeout_ms != 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    if (open_conn(conn) != IM_OK) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s", conn->err);
        im_amqp_close(conn);
        return NULL;
    }
    im_log_info("amqp %s: connected to %s:%u vhost %s", conn->name, conn->host, conn->port,
                conn->vhost);
    return conn;
}

static void release_delivery(im_amqp_conn_t *conn)
{
    if (!conn->has_env)
        return;
    amqp_destroy_envelope(&conn->env);
    conn->has_env = false;
}

/* Best effort: a polite close lets the broker requeue at once instead of after a
 * TCP timeout, but a failure changes nothing for us. */
static void disconnect(im_amqp_conn_t *conn)
{
    if (conn->amqp == NULL)
        return;
    (void)amqp_channel_close(conn->amqp, CHANNEL, AMQP_REPLY_SUCCESS);
    (void)amqp_connection_close(conn->amqp, AMQP_REPLY_SUCCESS);
    drop(conn);
}

void im_amqp_close(im_amqp_conn_t *conn)
{
    if (conn == NULL)
        return;
    release_delivery(conn);
    disconnect(conn);
    im_free(conn->host);
    im_free(conn->user);
    im_free(conn->password);
    im_free(conn->vhost);
    im_free(conn->name);
    im_free(conn);
}

im_err_t im_amqp_reconnect(im_amqp_conn_t *conn)
{
    im_err_t err;

    disconnect(conn);
    err = open_conn(conn);
    if (err == IM_OK)
        im_log_info("amqp %s: reconnected to %s:%u", conn->name, conn->host, conn->port);
    return err;
}

bool im_amqp_is_open(const im_amqp_conn_t *conn)
{
    return conn->amqp != NULL;
}

const char *im_amqp_last_error(const im_amqp_conn_t *conn)
{
    return conn->err;
}

/* ---------------------------------------------------------------- declarations */

static amqp_bytes_t str_bytes(const char *s)
{
    return amqp_cstring_bytes(s != NULL ? s : "");
}

im_err_t im_amqp_declare_queue(im_amqp_conn_t *conn, const im_amqp_queue_opts_t *opts,
                               char *name_out, size_t name_outlen, uint32_t *message_count)
{
    amqp_table_entry_t args[2];
    amqp_table_t table = {0, args};
    amqp_queue_declare_ok_t *ok;
    im_err_t err = require_open(conn);

    if (err != IM_OK)
        return err;
    if (opts->queue_type != NULL) {
        args[table.num_entries].key = amqp_cstring_bytes("x-queue-type");
        args[table.num_entries].value.kind = AMQP_FIELD_KIND_UTF8;
        args[table.num_entries++].value.value.bytes = amqp_cstring_bytes(opts->queue_type);
    }
    if (opts->expires_ms != 0) {
        args[table.num_entries].key = amqp_cstring_bytes("x-expires");
        args[table.num_entries].value.kind = AMQP_FIELD_KIND_U32;
        args[table.num_entries++].value.value.u32 = opts->expires_ms;
    }
    ok = amqp_queue_declare(conn->amqp, CHANNEL, str_bytes(opts->name), opts->passive,
                            opts->durable, opts->exclusive, opts->auto_delete, table);
    err = check_reply(conn, amqp_get_rpc_reply(conn->amqp), "declaring a queue");
    if (err != IM_OK)
        return err;
    if (message_count != NULL)
        *message_count = ok->message_count;
    if (name_out != NULL) {
        if (ok->queue.len >= name_outlen)
            return IM_ERANGE;
        memcpy(name_out, ok->queue.bytes, ok->queue.len);
        name_out[ok->queue.len] = '\0';
    }
    return IM_OK;
}

im_err_t im_amqp_delete_queue(im_amqp_conn_t *conn, const char *name, uint32_t *message_count)
{
    amqp_queue_delete_ok_t *ok;
    im_err_t err = require_open(conn);

    if (err != IM_OK)
        return err;
    ok = amqp_queue_delete(conn->amqp, CHANNEL, str_bytes(name), 0, 0);
    err = check_reply(conn, amqp_get_rpc_reply(conn->amqp), "deleting a queue");
    if (err == IM_OK && message_count != NULL)
        *message_count = ok->message_count;
    return err;
}

im_err_t im_amqp_declare_exchange(im_amqp_conn_t *conn, const char *name, const char *type,
                                  bool durable)
{
    im_err_t err = require_open(conn);

    if (err != IM_OK)
        return err;
    amqp_exchange_declare(conn->amqp, CHANNEL, str_bytes(name), str_bytes(type), 0, durable, 0, 0,
                          amqp_empty_table);
    return check_reply(conn, amqp_get_rpc_reply(conn->amqp), "declaring an exchange");
}

im_err_t im_amqp_delete_exchange(im_amqp_conn_t *conn, const char *name)
{
    im_err_t err = require_open(conn);

    if (err != IM_OK)
        return err;
    amqp_exchange_delete(conn->amqp, CHANNEL, str_bytes(name), 0);
    return check_reply(conn, amqp_get_rpc_reply(conn->amqp), "deleting an exchange");
}

im_err_t im_amqp_bind(im_amqp_conn_t *conn, const char *queue, const char *exchange,
                      const char *routing_key)
{
    im_err_t err = require_open(conn);

    if (err != IM_OK)
        return err;
    amqp_queue_bind(conn->amqp, CHANNEL, str_bytes(queue), str_bytes(exchange),
                    str_bytes(routing_key), amqp_empty_table);
    return check_reply(conn, amqp_get_rpc_reply(conn->amqp), "binding a queue");
}

im_err_t im_amqp_unbind(im_amqp_conn_t *conn, const char *queue, const char *exchange,
                        const char *routing_key)
{
    im_err_t err = require_open(conn);

    if (err != IM_OK)
        return err;
    amqp_queue_unbind(conn->amqp, CHANNEL, str_bytes(queue), str_bytes(exchange),
                      str_bytes(routing_key), amqp_empty_table);
    return check_reply(conn, amqp_get_rpc_reply(conn->amqp), "unbinding a queue");
}

/* ---------------------------------------------------------------- publisher */

im_amqp_publisher_t *im_amqp_publisher_new(im_amqp_conn_t *conn, unsigned window,
                                           im_amqp_confirm_cb cb, void *arg)
{
    im_amqp_publisher_t *pub = im_calloc(1, sizeof(*pub));

    pub->conn = conn;
    pub->cb = cb;
    pub->arg = arg;
    pub->window = window > 0 ? window : 1;
    pub->pending = im_calloc(pub->window, sizeof(*pub->pending));
    pub->next = pub->oldest = 1;
    return pub;
}

void im_amqp_publisher_free(im_amqp_publisher_t *pub)
{
    if (pub == NULL)
        return;
    im_free(pub->pending);
    im_free(pub);
}

unsigned im_amqp_publisher_outstanding(const im_amqp_publisher_t *pub)
{
    return pub->outstanding;
}

static void report(im_amqp_publisher_t *pub, uint64_t seqno, im_err_t result)
{
    pub->pending[seqno % pub->window] = false;
    pub->outstanding--;
    if (seqno == pub->sync_seqno) {
        pub->sync_done = true;
        pub->sync_result = result;
    }
    if (pub->cb != NULL)
        pub->cb(seqno, result, pub->arg);
}

static void advance_oldest(im_amqp_publisher_t *pub)
{
    while (pub->oldest < pub->next && !pub->pending[pub->oldest % pub->window])
        pub->oldest++;
}

static void fail_all(im_amqp_publisher_t *pub, im_err_t result)
{
    uint64_t s;

    for (s = pub->oldest; s < pub->next; s++)
        if (pub->pending[s % pub->window])
            report(pub, s, result);
    pub->oldest = pub->next;
}

/* The channel our confirms were promised on is gone (reopened or connection
 * lost): none of them will ever come. */
static void settle_lost_channel(im_amqp_publisher_t *pub)
{
    if (pub->epoch != pub->conn->epoch || pub->conn->amqp == NULL)
        fail_all(pub, IM_ECLOSED);
}

/* A broker ack or nack of `tag` (and, with multiple, of every tag below it).  Tags
 * outside the unreported range are stale repeats: nothing to do. */
static void settle(im_amqp_publisher_t *pub, uint64_t tag, bool multiple, im_err_t result)
{
    uint64_t last = pub->tag_base + tag, s;

    if (tag == 0 || last >= pub->next || last < pub->oldest)
        return;
    for (s = multiple ? pub->oldest : last; s <= last; s++)
        if (pub->pending[s % pub->window])
            report(pub, s, result);
    advance_oldest(pub);
}

static im_err_t enable_confirms(im_amqp_publisher_t *pub)
{
    im_amqp_conn_t *conn = pub->conn;
    im_err_t err;

    settle_lost_channel(pub);
    err = require_open(conn);
    if (err != IM_OK || pub->epoch == conn->epoch)
        return err;
    if (conn->confirm_epoch != conn->epoch) {
        amqp_confirm_select(conn->amqp, CHANNEL);
        err = check_reply(conn, amqp_get_rpc_reply(conn->amqp), "enabling publisher confirms");
        if (err != IM_OK)
            return err;
        conn->confirm_epoch = conn->epoch;
        conn->confirm_published = 0;
    }
    pub->epoch = conn->epoch;
    /* The broker numbers a channel's messages from 1 after confirm.select;
     * tags of messages published before this publisher fall below `oldest`
     * and are ignored. */
    pub->tag_base = pub->next - 1 - conn->confirm_published;
    return IM_OK;
}

im_err_t im_amqp_publish(im_amqp_publisher_t *pub, const char *exchange, const char *routing_key,
                         const void *body, size_t len, bool persistent, uint64_t *out_seqno)
{
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
        .delivery_mode = persistent ? AMQP_DELIVERY_PERSISTENT : AMQP_DELIVERY_NONPERSISTENT,
    };
    amqp_bytes_t bytes = {len, (void *)body};
    uint64_t seqno;
    im_err_t err = enable_confirms(pub);
    int rc;

    if (err != IM_OK)
        return err;
    if (pub->next - pub->oldest >= pub->window)
        return IM_EAGAIN;
    rc = amqp_basic_publish(pub->conn->amqp, CHANNEL, str_bytes(exchange), str_bytes(routing_key),
                            0, 0, &props, bytes);
    if (rc != AMQP_STATUS_OK) {
        err = lost(pub->conn, rc, "publishing");
        settle_lost_channel(pub);
        return err;
    }
    pub->conn->confirm_published++;
    seqno = pub->next++;
    pub->pending[seqno % pub->window] = true;
    pub->outstanding++;
    if (out_seqno != NULL)
        *out_seqno = seqno;
    return IM_OK;
}

static im_err_t handle_publisher_frame(im_amqp_publisher_t *pub, const amqp_frame_t *frame)
{
    const amqp_basic_ack_t *ack;
    const amqp_basic_nack_t *nack;

    /* Heartbeats are consumed by rabbitmq-c; content frames can only belong to a
     * basic.return, which we never ask for (no mandatory). */
    if (frame->frame_type != AMQP_FRAME_METHOD)
        return IM_OK;
    switch (frame->payload.method.id) {
    case AMQP_BASIC_ACK_METHOD:
        ack = frame->payload.method.decoded;
        settle(pub, ack->delivery_tag, ack->multiple, IM_OK);
        return IM_OK;
    case AMQP_BASIC_NACK_METHOD:
        nack = frame->payload.method.decoded;
        settle(pub, nack->delivery_tag, nack->multiple, IM_EIO);
        return IM_OK;
    case AMQP_CHANNEL_CLOSE_METHOD:
        fail_all(pub, channel_closed(pub->conn, frame->payload.method.decoded, "publishing"));
        return require_open(pub->conn);
    case AMQP_CONNECTION_CLOSE_METHOD:
        return connection_closed(pub->conn, frame->payload.method.decoded, "publishing");
    default:
        return IM_OK;
    }
}

static im_err_t read_publisher_frame(im_amqp_publisher_t *pub, int timeout_ms)
{
    amqp_connection_state_t amqp = pub->conn->amqp;
    struct timeval tv = ms_to_tv(timeout_ms > 0 ? (unsigned)timeout_ms : 0);
    amqp_frame_t frame;
    int rc;

    amqp_maybe_release_buffers(amqp);
    rc = amqp_simple_wait_frame_noblock(amqp, &frame, timeout_ms < 0 ? NULL : &tv);
    if (rc == AMQP_STATUS_TIMEOUT)
        return IM_EAGAIN;
    if (rc != AMQP_STATUS_OK)
        return lost(pub->conn, rc, "waiting for confirms");
    return handle_publisher_frame(pub, &frame);
}

static bool frames_ready(amqp_connection_state_t amqp)
{
    return amqp != NULL && (amqp_frames_enqueued(amqp) || amqp_data_in_buffer(amqp));
}

im_err_t im_amqp_publisher_poll(im_amqp_publisher_t *pub, int timeout_ms)
{
    im_err_t err;

    settle_lost_channel(pub);
    err = require_open(pub->conn);
    if (err != IM_OK)
        return err;
    err = read_publisher_frame(pub, timeout_ms);
    /* Drain what is already here, so one poll reports a whole burst of acks.  Only
     * part of a frame may have arrived: that is for the next poll. */
    while (err == IM_OK && frames_ready(pub->conn->amqp)) {
        err = read_publisher_frame(pub, 0);
        if (err == IM_EAGAIN) {
            err = IM_OK;
            break;
        }
    }
    settle_lost_channel(pub);
    return err;
}

int im_amqp_fd(const im_amqp_conn_t *conn)
{
    return conn != NULL && conn->amqp != NULL ? amqp_get_sockfd(conn->amqp) : -1;
}

bool im_amqp_publisher_buffered(const im_amqp_publisher_t *pub)
{
    return frames_ready(pub->conn->amqp);
}

static int remaining_ms(uint64_t deadline_ms)
{
    uint64_t now = im_mono_ms();

    return now >= deadline_ms ? 0 : (int)(deadline_ms - now);
}

static im_err_t wait_sync(im_amqp_publisher_t *pub, uint64_t deadline_ms)
{
    im_err_t err = IM_OK;

    while (!pub->sync_done) {
        int left = remaining_ms(deadline_ms);

        if (left == 0)
            return IM_ETIMEDOUT;
        err = im_amqp_publisher_poll(pub, left);
        if (err != IM_OK && err != IM_EAGAIN)
            break;
    }
    return pub->sync_done ? pub->sync_result : err;
}

im_err_t im_amqp_publish_sync(im_amqp_publisher_t *pub, const char *exchange,
                              const char *routing_key, const void *body, size_t len,
                              bool persistent, int timeout_ms)
{
    uint64_t deadline_ms = im_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    uint64_t seqno;
    im_err_t err;

    while ((err = im_amqp_publish(pub, exchange, routing_key, body, len, persistent, &seqno)) ==
           IM_EAGAIN) {
        int left = remaining_ms(deadline_ms);

        if (left == 0)
            return IM_ETIMEDOUT;
        err = im_amqp_publisher_poll(pub, left);
        if (err != IM_OK && err != IM_EAGAIN)
            return err;
    }
    if (err != IM_OK)
        return err;
    pub->sync_seqno = seqno;
    pub->sync_done = false;
    err = wait_sync(pub, deadline_ms);
    pub->sync_seqno = 0;
    return err;
}

/* ---------------------------------------------------------------- consumer */

im_err_t im_amqp_consume(im_amqp_conn_t *conn, const char *queue, uint16_t prefetch, bool no_ack)
{
    im_err_t err = require_open(conn);

    if (err != IM_OK)
        return err;
    amqp_basic_qos(conn->amqp, CHANNEL, 0, prefetch, 0);
    err = check_reply(conn, amqp_get_rpc_reply(conn->amqp), "setting the prefetch");
    if (err != IM_OK)
        return err;
    amqp_basic_consume(conn->amqp, CHANNEL, str_bytes(queue), amqp_empty_bytes, 0, no_ack, 0,
                       amqp_empty_table);
    return check_reply(conn, amqp_get_rpc_reply(conn->amqp), "starting a consumer");
}

/* amqp_consume_message met a frame other than a delivery.  Returns IM_EAGAIN for
 * frames a consumer can ignore, IM_ECLOSED when the consumer is gone. */
static im_err_t handle_consumer_frame(im_amqp_conn_t *conn)
{
    struct timeval zero = {0, 0};
    amqp_frame_t frame;
    int rc = amqp_simple_wait_frame_noblock(conn->amqp, &frame, &zero);

    if (rc != AMQP_STATUS_OK)
        return lost(conn, rc, "reading a frame");
    if (frame.frame_type != AMQP_FRAME_METHOD)
        return IM_EAGAIN;
    switch (frame.payload.method.id) {
    case AMQP_CHANNEL_CLOSE_METHOD:
        (void)channel_closed(conn, frame.payload.method.decoded, "consuming");
        return IM_ECLOSED;
    case AMQP_CONNECTION_CLOSE_METHOD:
        (void)connection_closed(conn, frame.payload.method.decoded, "consuming");
        return IM_ECLOSED;
    case AMQP_BASIC_CANCEL_METHOD:
        set_err(conn, "consuming: consumer cancelled by broker (queue deleted?)");
        return IM_ECLOSED;
    default:
        return IM_EAGAIN;
    }
}

static void fill_delivery(const amqp_envelope_t *env, im_amqp_delivery_t *out)
{
    size_t rk_len = env->routing_key.len < sizeof(out->routing_key) ? env->routing_key.len
                                                                    : sizeof(out->routing_key) - 1;

    out->delivery_tag = env->delivery_tag;
    out->body = env->message.body.bytes;
    out->len = env->message.body.len;
    out->redelivered = env->redelivered != 0;
    memcpy(out->routing_key, env->routing_key.bytes, rk_len);
    out->routing_key[rk_len] = '\0';
}

static im_err_t next_delivery(im_amqp_conn_t *conn, int timeout_ms, im_amqp_delivery_t *out)
{
    struct timeval tv = ms_to_tv(timeout_ms > 0 ? (unsigned)timeout_ms : 0);
    amqp_rpc_reply_t r;

    amqp_maybe_release_buffers(conn->amqp);
    r = amqp_consume_message(conn->amqp, &conn->env, timeout_ms < 0 ? NULL : &tv, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        conn->has_env = true;
        fill_delivery(&conn->env, out);
        return IM_OK;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
        if (r.library_error == AMQP_STATUS_TIMEOUT)
            return IM_EAGAIN;
        if (r.library_error == AMQP_STATUS_UNEXPECTED_STATE)
            return handle_consumer_frame(conn);
    }
    return check_reply(conn, r, "consuming");
}

im_err_t im_amqp_consumer_next(im_amqp_conn_t *conn, int timeout_ms, im_amqp_delivery_t *out)
{
    uint64_t deadline_ms = im_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    im_err_t err;

    release_delivery(conn);
    /* A frame we skip (a stray ack, a heartbeat-only wakeup) must not end the wait
     * early: go round until a delivery, an error or the deadline. */
    do {
        err = require_open(conn);
        if (err == IM_OK)
            err = next_delivery(conn, timeout_ms < 0 ? -1 : remaining_ms(deadline_ms), out);
    } while (err == IM_EAGAIN && (timeout_ms < 0 || remaining_ms(deadline_ms) > 0));
    return err;
}

im_err_t im_amqp_ack(im_amqp_conn_t *conn, uint64_t tag, bool multiple)
{
    im_err_t err = require_open(conn);
    int rc;

    if (err != IM_OK)
        return err;
    rc = amqp_basic_ack(conn->amqp, CHANNEL, tag, multiple);
    return rc == AMQP_STATUS_OK ? IM_OK : lost(conn, rc, "acking");
}

im_err_t im_amqp_nack(im_amqp_conn_t *conn, uint64_t tag, bool multiple, bool requeue)
{
    im_err_t err = require_open(conn);
    int rc;

    if (err != IM_OK)
        return err;
    rc = amqp_basic_nack(conn->amqp, CHANNEL, tag, multiple, requeue);
    return rc == AMQP_STATUS_OK ? IM_OK : lost(conn, rc, "nacking");
}
