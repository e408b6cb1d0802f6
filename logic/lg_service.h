/*
 * lg_service.h - one logic instance: wires the modules together from a
 * config: the gRPC API (lg_rpc: Auth, Group, Message, Session of
 * proto/im.proto), the publishing thread (lg_publisher: Sends and fan-out)
 * and the batch writer (durable queue -> MySQL).
 *
 * Threads: create, start, stop and free from one thread (main).  The writer
 * runs on its own thread with its own AMQP and MySQL connections; the gRPC
 * server has its own threads and MySQL sessions (lg_rpc.h).
 */
#ifndef LG_SERVICE_H
#define LG_SERVICE_H

#include "im_err.h"
#include "lg_config.h"
#include "lg_writer.h"

typedef struct lg_service_s lg_service_t;

/* Builds the service from cfg (which must outlive it).  Sets the process-wide
 * password cost from cfg->password_cost.  Returns NULL with a log line on an
 * invalid setting, including no --jwt-secret without --dev. */
lg_service_t *lg_service_new(const lg_config_t *cfg);

/* Binds the gRPC API (its port in *grpc_port, may be NULL) and starts the
 * writer.  Database and broker connections are made later, with retries, so
 * servers that are not up yet are waited for, not fatal.  Returns IM_OK or
 * IM_EIO when the gRPC address cannot be bound. */
im_err_t lg_service_start(lg_service_t *s, unsigned *grpc_port);

/* Graceful stop: the gRPC server finishes the calls in flight, the writer
 * flushes and acks what it holds, then everything closes.  Idempotent. */
void lg_service_stop(lg_service_t *s);

/* Stops if needed and frees.  NULL is fine. */
void lg_service_free(lg_service_t *s);

void lg_service_writer_stats(lg_service_t *s, lg_writer_stats_t *out);

#endif
