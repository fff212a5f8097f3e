// demo-site: the small web site `make demo` serves on loopback for the workers to crawl.
//
//	demo-site -addr 127.0.0.1:16480 [-log FILE]
//
// Every page is generated from its path, so the site is as large as a crawl wants and costs no
// disk: /<section>/ is a section's front page, and every page /<section>/<a>/<b>/.../ links to
// eight children /<section>/<a>/<b>/.../<i>/ (i = 1..8), its parent and the section's front page.
// A crawl with maxDepth d therefore finds 1 + 8 + ... + 8^d pages (d = 4: 4,681), so at one
// request per second a task keeps running for over an hour. /robots.txt disallows /private/ only.
//
// Each request is logged as one line: time, the worker and the assignment number named in the
// User-Agent ("crawler-operator/<version> (worker <pod>; assignment <n>)"), status, path.
package main

import (
	"flag"
	"fmt"
	"html"
	"io"
	"log"
	"maps"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// The sections, one per sample resource of the demo (any other name works too).
var sections = map[string]string{
	"book":  "Books by tag",
	"news":  "News archive",
	"docs":  "Documentation",
	"forum": "Forum threads",
	"shop":  "Product catalogue",
}

var (
	segment = regexp.MustCompile(`^[1-8]$`)
	agent   = regexp.MustCompile(`\(worker ([^;)]+)(?:; assignment ([0-9]+))?\)`)
)

func main() {
	addr := flag.String("addr", "127.0.0.1:16480", "listen address")
	logPath := flag.String("log", "", "request log file (default: stdout)")
	flag.Parse()

	var out io.Writer = os.Stdout
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			log.Fatalf("demo-site: %v", err)
		}
		defer f.Close()
		out = f
	}
	logger := log.New(out, "", 0)

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := serve(w, r)
		worker, assignment := "-", "-"
		if m := agent.FindStringSubmatch(r.UserAgent()); m != nil {
			worker = m[1]
			if m[2] != "" {
				assignment = m[2]
			}
		}
		logger.Printf("%s %s %s %d %s", time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), worker, assignment, status, r.URL.Path)
	})
	server := &http.Server{Addr: *addr, Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("demo-site: serving on http://%s/", *addr)
	log.Fatal(server.ListenAndServe())
}

func serve(w http.ResponseWriter, r *http.Request) int {
	path := r.URL.Path
	switch {
	case path == "/robots.txt":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "User-agent: *\nDisallow: /private/\n")
		return http.StatusOK
	case path == "/":
		var b strings.Builder
		for _, name := range slices.Sorted(maps.Keys(sections)) {
			fmt.Fprintf(&b, "<li><a href=\"/%s/\">%s</a></li>\n", name, html.EscapeString(sections[name]))
		}
		return page(w, "crawler-operator demo site", "<ul>\n"+b.String()+"</ul>")
	}
	if !strings.HasSuffix(path, "/") {
		http.Redirect(w, r, path+"/", http.StatusMovedPermanently)
		return http.StatusMovedPermanently
	}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	title, ok := sections[parts[0]]
	if !ok {
		http.NotFound(w, r)
		return http.StatusNotFound
	}
	for _, p := range parts[1:] {
		if !segment.MatchString(p) {
			http.NotFound(w, r)
			return http.StatusNotFound
		}
	}
	prefix := ""
	if len(parts) > 1 {
		prefix = strings.Join(parts[1:], ".") + "."
	}
	var b strings.Builder
	b.WriteString("<ul>\n")
	for i := 1; i <= 8; i++ {
		fmt.Fprintf(&b, "<li><a href=\"%s%d/\">item %s%d</a></li>\n", path, i, prefix, i)
	}
	b.WriteString("</ul>\n")
	if len(parts) > 1 {
		fmt.Fprintf(&b, "<p><a href=\"../\">up</a> <a href=\"/%s/\">%s</a></p>\n", parts[0], html.EscapeString(title))
	}
	name := title
	if len(parts) > 1 {
		name = fmt.Sprintf("%s: item %s", title, strings.Join(parts[1:], "."))
	}
	return page(w, name, b.String())
}

func page(w http.ResponseWriter, title, body string) int {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, "<!doctype html>\n<html><head><title>%s</title></head>\n<body><h1>%s</h1>\n%s</body></html>\n",
		html.EscapeString(title), html.EscapeString(title), body)
	return http.StatusOK
}
