/* An ordinary HTTP app, knowing nothing of Sandstorm: a note store on
 * 127.0.0.1:PORT that keeps each note as a file under /var/notes. It runs
 * behind the grain-side HTTP bridge.
 *
 *   GET /              names of all notes, one a line
 *   GET /notes/NAME    the note
 *   PUT /notes/NAME    store the body (201)
 *   POST /notes/NAME   append the body; answers the new size
 *   PATCH /notes/NAME  append the body; answers "patched SIZE"
 *   DELETE /notes/NAME remove (204)
 *   GET /big?kb=N      N KiB in chunked transfer encoding, sent in pieces
 *   GET /ws            a WebSocket that answers each text message M with
 *                      "echo: M" (in a child process, so others go on)
 *
 * One request per connection; the bridge opens a connection each time.
 * NOTES_DIR overrides /var/notes (for running it bare, outside a grain). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_REQUEST (8 << 20)

static int write_all(int fd, const char *data, size_t length) {
    while (length > 0) {
        ssize_t n = write(fd, data, length);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

static void respond(int fd, int status, const char *reason, const char *body, size_t length) {
    char header[256];
    int n = snprintf(header, sizeof header,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, reason, length);
    if (write_all(fd, header, (size_t)n) == 0 && length > 0) write_all(fd, body, length);
}

static void respond_text(int fd, int status, const char *reason, const char *text) {
    respond(fd, status, reason, text, strlen(text));
}

static const char *notes_dir = "/var/notes";

/* "/notes/NAME" to "/var/notes/NAME" if NAME is one plain component. */
static int note_path(const char *target, char *out, size_t size) {
    const char *prefix = "/notes/";
    if (strncmp(target, prefix, strlen(prefix)) != 0) return -1;
    const char *name = target + strlen(prefix);
    if (*name == '\0' || strchr(name, '/') || strcmp(name, ".") == 0 ||
        strcmp(name, "..") == 0) {
        return -1;
    }
    int n = snprintf(out, size, "%s/%s", notes_dir, name);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

static void list_notes(int fd) {
    char body[65536];
    size_t used = 0;
    DIR *dir = opendir(notes_dir);
    if (dir) {
        struct dirent *entry;
        while ((entry = readdir(dir)) != NULL) {
            if (entry->d_name[0] == '.') continue;
            int n = snprintf(body + used, sizeof body - used, "%s\n", entry->d_name);
            if (n < 0 || (size_t)n >= sizeof body - used) break;
            used += (size_t)n;
        }
        closedir(dir);
    }
    respond(fd, 200, "OK", body, used);
}

static void send_big(int fd, const char *query) {
    long kb = 64;
    const char *at = query ? strstr(query, "kb=") : NULL;
    if (at) kb = atol(at + 3);
    const char *header = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if (write_all(fd, header, strlen(header)) < 0) return;
    char chunk[1024 + 16];
    for (long i = 0; i < kb; i++) {
        int n = snprintf(chunk, sizeof chunk, "400\r\n");
        memset(chunk + n, 'a' + (int)(i % 26), 1024);
        memcpy(chunk + n + 1024, "\r\n", 2);
        if (write_all(fd, chunk, (size_t)n + 1026) < 0) return;
    }
    write_all(fd, "0\r\n\r\n", 5);
}


/* SHA-1, for the WebSocket handshake's accept key only. */
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const unsigned char *data, size_t length, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t padded = ((length + 8) / 64 + 1) * 64;
    unsigned char *message = calloc(padded, 1);
    if (!message) abort();
    memcpy(message, data, length);
    message[length] = 0x80;
    uint64_t bits = (uint64_t)length * 8;
    for (int i = 0; i < 8; i++) message[padded - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t block = 0; block < padded; block += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++) {
            const unsigned char *p = message + block + 4 * i;
            w[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        }
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    free(message);
    for (int i = 0; i < 20; i++) out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const unsigned char *data, size_t length, char *out) {
    static const char table[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < length; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < length) v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < length) v |= data[i + 2];
        out[o++] = table[(v >> 18) & 63];
        out[o++] = table[(v >> 12) & 63];
        out[o++] = i + 1 < length ? table[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < length ? table[v & 63] : '=';
    }
    out[o] = '\0';
}

static int read_exact(int fd, unsigned char *buffer, size_t length) {
    while (length > 0) {
        ssize_t n = read(fd, buffer, length);
        if (n <= 0) return -1;
        buffer += n;
        length -= (size_t)n;
    }
    return 0;
}

/* Echoes text messages until the client closes. Frames are small here. */
static void websocket_echo(int fd, const char *request) {
    const char *key = strcasestr(request, "\r\nSec-WebSocket-Key:");
    if (!key) {
        respond_text(fd, 400, "Bad Request", "not a WebSocket request\n");
        return;
    }
    key += strlen("\r\nSec-WebSocket-Key:");
    while (*key == ' ') key++;
    char joined[128];
    size_t key_length = strcspn(key, "\r");
    if (key_length > 60) return;
    snprintf(joined, sizeof joined, "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
             (int)key_length, key);
    unsigned char digest[20];
    sha1((const unsigned char *)joined, strlen(joined), digest);
    char accept[32];
    base64(digest, 20, accept);
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept);
    if (write_all(fd, head, (size_t)n) < 0) return;
    for (;;) {
        unsigned char header[2], mask[4], payload[125 + 6];
        if (read_exact(fd, header, 2) < 0) return;
        size_t length = header[1] & 0x7f;
        if (length > 119 || !(header[1] & 0x80)) return; /* small masked frames only */
        if (read_exact(fd, mask, 4) < 0 || read_exact(fd, payload + 6, length) < 0) return;
        for (size_t i = 0; i < length; i++) payload[6 + i] ^= mask[i % 4];
        if ((header[0] & 0x0f) == 8) {
            unsigned char close_frame[2] = {0x88, 0};
            write_all(fd, (const char *)close_frame, 2);
            return;
        }
        unsigned char reply[2 + 6 + 125];
        reply[0] = 0x81;
        reply[1] = (unsigned char)(length + 6);
        memcpy(reply + 2, "echo: ", 6);
        memcpy(reply + 8, payload + 6, length);
        if (write_all(fd, (const char *)reply, length + 8) < 0) return;
    }
}

static void handle(int fd, char *request, size_t length) {
    char method[16], target[1024];
    if (sscanf(request, "%15s %1023s", method, target) != 2) {
        respond_text(fd, 400, "Bad Request", "bad request line\n");
        return;
    }
    char *body = strstr(request, "\r\n\r\n");
    body = body ? body + 4 : request + length;
    size_t body_length = (size_t)(request + length - body);

    char *query = strchr(target, '?');
    if (query) *query++ = '\0';
    if (strcmp(method, "GET") == 0 && strcmp(target, "/") == 0) {
        list_notes(fd);
        return;
    }
    if (strcmp(method, "GET") == 0 && strcmp(target, "/big") == 0) {
        send_big(fd, query);
        return;
    }
    if (strcmp(method, "GET") == 0 && strcmp(target, "/ws") == 0) {
        if (fork() == 0) {
            websocket_echo(fd, request);
            _exit(0);
        }
        return;
    }
    char path[512];
    if (note_path(target, path, sizeof path) < 0) {
        respond_text(fd, 404, "Not Found", "no such page\n");
        return;
    }
    if (strcmp(method, "GET") == 0) {
        int file = open(path, O_RDONLY);
        if (file < 0) {
            respond_text(fd, 404, "Not Found", "no such note\n");
            return;
        }
        static char content[MAX_REQUEST];
        ssize_t n = read(file, content, sizeof content);
        close(file);
        respond(fd, 200, "OK", content, n > 0 ? (size_t)n : 0);
    } else if (strcmp(method, "DELETE") == 0) {
        if (unlink(path) == 0) respond(fd, 204, "No Content", "", 0);
        else respond_text(fd, 404, "Not Found", "no such note\n");
    } else if (strcmp(method, "PUT") == 0 || strcmp(method, "POST") == 0 ||
               strcmp(method, "PATCH") == 0) {
        int put = strcmp(method, "PUT") == 0;
        int file = open(path, O_WRONLY | O_CREAT | (put ? O_TRUNC : O_APPEND), 0600);
        if (file < 0 || write_all(file, body, body_length) < 0 || fsync(file) < 0) {
            respond_text(fd, 500, "Internal Server Error", "cannot write\n");
            if (file >= 0) close(file);
            return;
        }
        close(file);
        struct stat info;
        stat(path, &info);
        char text[64];
        snprintf(text, sizeof text, "%s%lld\n", strcmp(method, "PATCH") == 0 ? "patched " : "",
                 (long long)info.st_size);
        if (put) respond_text(fd, 201, "Created", text);
        else respond_text(fd, 200, "OK", text);
    } else {
        respond_text(fd, 405, "Method Not Allowed", "method not allowed\n");
    }
}

/* Reads headers, then Content-Length bytes of body. */
static ssize_t read_request(int fd, char *buffer, size_t size) {
    size_t used = 0;
    size_t want = 0;
    for (;;) {
        if (used == size) return -1;
        ssize_t n = read(fd, buffer + used, size - used);
        if (n <= 0) return used > 0 ? (ssize_t)used : -1;
        used += (size_t)n;
        buffer[used] = '\0';
        char *end = strstr(buffer, "\r\n\r\n");
        if (end && want == 0) {
            size_t header = (size_t)(end + 4 - buffer);
            char *cl = strcasestr(buffer, "\r\nContent-Length:");
            want = header + (cl && cl < end ? (size_t)atol(cl + 17) : 0);
            if (want > size) return -1;
        }
        if (want > 0 && used >= want) return (ssize_t)used;
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    if (getenv("NOTES_DIR")) notes_dir = getenv("NOTES_DIR");
    mkdir(notes_dir, 0700);
    int server = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(server, 64) < 0) {
        perror("notes: listen");
        return 1;
    }
    signal(SIGCHLD, SIG_IGN); /* WebSocket children reap themselves */
    static char request[MAX_REQUEST + 1];
    for (;;) {
        int client = accept(server, NULL, NULL);
        if (client < 0) continue;
        ssize_t n = read_request(client, request, MAX_REQUEST);
        if (n > 0) handle(client, request, (size_t)n);
        close(client);
    }
}
