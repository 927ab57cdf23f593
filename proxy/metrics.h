/* metrics: the Prometheus text exposition on metrics.address (evhttp, main thread). */
#ifndef IMAPGATE_METRICS_H
#define IMAPGATE_METRICS_H

struct gate;
struct metrics;

/* Serve /metrics for gate g on its main loop; NULL after logging why. */
struct metrics	*metrics_start(struct gate *g);
/* Stop serving and free. */
void		 metrics_stop(struct metrics *m);

#endif
