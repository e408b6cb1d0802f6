#include <pthread.h>

#include "im_alloc.h"
#include "im_queue.h"

struct im_queue_s {
    pthread_mutex_t lock;
    im_queue_node_t *head;
    im_queue_node_t **tail; /* &head when empty, else &last->next: O(1) append */
    im_queue_wakeup_cb wakeup;
    void *wakeup_arg;
};

im_queue_t *im_queue_new(im_queue_wakeup_cb wakeup, void *arg)
{
    im_queue_t *q = im_calloc(1, sizeof(*q));

    pthread_mutex_init(&q->lock, NULL);
    q->tail = &q->head;
    q->wakeup = wakeup;
    q->wakeup_arg = arg;
    return q;
}

void im_queue_free(im_queue_t *q)
{
    if (q == NULL)
        return;
    pthread_mutex_destroy(&q->lock);
    im_free(q);
}

void im_queue_push(im_queue_t *q, im_queue_node_t *node)
{
    int was_empty;

    node->next = NULL;
    pthread_mutex_lock(&q->lock);
    was_empty = q->head == NULL;
    *q->tail = node;
    q->tail = &node->next;
    pthread_mutex_unlock(&q->lock);
    /* Outside the lock: the wakeup may be a syscall, and holding the lock
     * through it would stall the other producers.  If the consumer drains
     * before this runs, the wakeup is merely spurious. */
    if (was_empty && q->wakeup != NULL)
        q->wakeup(q->wakeup_arg);
}

im_queue_node_t *im_queue_drain(im_queue_t *q)
{
    im_queue_node_t *list;

    pthread_mutex_lock(&q->lock);
    list = q->head;
    q->head = NULL;
    q->tail = &q->head;
    pthread_mutex_unlock(&q->lock);
    return list;
}
