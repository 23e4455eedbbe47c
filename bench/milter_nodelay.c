/* LD_PRELOAD shim for bench/milter.sh (FILTER_NODELAY=1): sets TCP_NODELAY on every
 * socket a filter accepts. libmilter writes each reply packet with its own writev()
 * and leaves Nagle's algorithm on, so a filter that answers the end of message with
 * changes (clamav-milter's X-Virus-* headers, opendkim's DKIM-Signature) and then
 * "accept" holds the later packets until the proxy ACKs the first, which Linux delays
 * by up to 40 ms. This shows what the filters cost without that stall.
 *   cc -shared -fPIC -O2 -o milter_nodelay.so milter_nodelay.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static int nodelay(int fd) {
  if (fd >= 0) {
    int saved = errno, on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    errno = saved;
  }
  return fd;
}

int accept(int s, struct sockaddr *a, socklen_t *l) {
  static int (*real)(int, struct sockaddr *, socklen_t *);
  if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
  return nodelay(real(s, a, l));
}

int accept4(int s, struct sockaddr *a, socklen_t *l, int flags) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
  return nodelay(real(s, a, l, flags));
}
