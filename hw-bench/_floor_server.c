/* The floor of any server on this machine, for bench_agent.py (issue 16): a keep-alive
 * HTTP server that reads each request by its Content-Length (head and body, like every
 * server must) and writes back a pre-built answer read from a file at start, with no
 * inference, no parsing beyond Content-Length, no allocation. Not product code.
 *
 *   cc -O2 -o floor _floor_server.c && ./floor PORT ANSWER_FILE   (prints "ready")
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static char buf[1 << 23];
static char answer[1 << 20];

/* one connection until it closes: request after request */
static void serve(int conn, size_t answer_len) {
    size_t have = 0;
    for (;;) {
        char *end;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
            ssize_t n = recv(conn, buf + have, sizeof buf - have, 0);
            if (n <= 0) return;
            have += (size_t)n;
        }
        size_t head = (size_t)(end + 4 - buf), body = 0;
        for (char *p = buf; p < end; p++)
            if ((p == buf || p[-1] == '\n') && !strncasecmp(p, "content-length:", 15))
                body = strtoul(p + 15, NULL, 10);
        if (head + body > sizeof buf) return;
        while (have < head + body) {
            ssize_t n = recv(conn, buf + have, sizeof buf - have, 0);
            if (n <= 0) return;
            have += (size_t)n;
        }
        for (size_t sent = 0; sent < answer_len;) {
            ssize_t n = send(conn, answer + sent, answer_len - sent, MSG_NOSIGNAL);
            if (n <= 0) return;
            sent += (size_t)n;
        }
        memmove(buf, buf + head + body, have - head - body);
        have -= head + body;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    FILE *file = fopen(argv[2], "rb");
    if (!file) return 2;
    size_t answer_len = fread(answer, 1, sizeof answer, file);
    fclose(file);
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {0};
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)atoi(argv[1]));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 128)) {
        perror("bind");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int conn = accept(listener, NULL, NULL);
        if (conn < 0) continue;
        setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve(conn, answer_len);
        close(conn);
    }
}
