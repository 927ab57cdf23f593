/* metrics: the Prometheus text exposition on metrics.address (evhttp, main thread). */
#ifndef IMAPGATE_METRICS_H
#define IMAPGATE_METRICS_H

struct gate;
struct metrics;
struct evbuffer;

/* Serve /metrics for gate g on its main loop; NULL after logging why. */
struct metrics	*metrics_start(struct gate *g);
/* Stop serving and free. */
void		 metrics_stop(struct metrics *m);
/* Every metric, in the exposition format, into b (main thread). */
void		 metrics_render(struct gate *g, struct evbuffer *b);

#endif
