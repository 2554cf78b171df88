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
    static char request[MAX_REQUEST + 1];
    for (;;) {
        int client = accept(server, NULL, NULL);
        if (client < 0) continue;
        ssize_t n = read_request(client, request, MAX_REQUEST);
        if (n > 0) handle(client, request, (size_t)n);
        close(client);
    }
}
