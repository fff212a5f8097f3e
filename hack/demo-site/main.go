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
// /books/ is a small book catalogue in the shape of the original douban_book_list task's site:
// list pages (/books/, /books/?start=8, /books/?start=16, eight books each, a "next" link) lead
// to detail pages /books/subject/<id>/ with a title, author, price, rating and tags. The
// example examples/book-list.yaml extracts them (docs/worker.md#extraction-rules).
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
	case path == "/books/":
		return bookList(w, r)
	case strings.HasPrefix(path, "/books/subject/"):
		return bookDetail(w, r, strings.TrimPrefix(path, "/books/subject/"))
	case path == "/":
		var b strings.Builder
		for _, name := range slices.Sorted(maps.Keys(sections)) {
			fmt.Fprintf(&b, "<li><a href=\"/%s/\">%s</a></li>\n", name, html.EscapeString(sections[name]))
		}
		b.WriteString("<li><a href=\"/books/\">Book list (examples/book-list.yaml extracts it)</a></li>\n")
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

// book is one entry of the /books/ catalogue.
type book struct {
	ID     int
	Title  string
	Author string
	Year   int
	Tags   []string
}

// books: public-domain classics; price and rating are derived from the ID.
var books = []book{
	{1001, "Pride and Prejudice", "Jane Austen", 1813, []string{"novel", "classic"}},
	{1002, "Moby-Dick", "Herman Melville", 1851, []string{"novel", "sea"}},
	{1003, "Frankenstein", "Mary Shelley", 1818, []string{"novel", "gothic"}},
	{1004, "Dracula", "Bram Stoker", 1897, []string{"novel", "gothic"}},
	{1005, "Great Expectations", "Charles Dickens", 1861, []string{"novel"}},
	{1006, "Jane Eyre", "Charlotte Brontë", 1847, []string{"novel", "classic"}},
	{1007, "Wuthering Heights", "Emily Brontë", 1847, []string{"novel", "gothic"}},
	{1008, "War and Peace", "Leo Tolstoy", 1869, []string{"novel", "history"}},
	{1009, "Crime and Punishment", "Fyodor Dostoevsky", 1866, []string{"novel"}},
	{1010, "Madame Bovary", "Gustave Flaubert", 1857, []string{"novel"}},
	{1011, "The Count of Monte Cristo", "Alexandre Dumas", 1844, []string{"novel", "adventure"}},
	{1012, "Les Misérables", "Victor Hugo", 1862, []string{"novel", "history"}},
	{1013, "Journey to the West", "Wu Cheng'en", 1592, []string{"novel", "classic"}},
	{1014, "Dream of the Red Chamber", "Cao Xueqin", 1791, []string{"novel", "classic"}},
	{1015, "The Tale of Genji", "Murasaki Shikibu", 1010, []string{"novel", "classic"}},
	{1016, "Don Quixote", "Miguel de Cervantes", 1605, []string{"novel", "adventure"}},
	{1017, "Treasure Island", "Robert Louis Stevenson", 1883, []string{"adventure"}},
	{1018, "The Time Machine", "H. G. Wells", 1895, []string{"science fiction"}},
	{1019, "Twenty Thousand Leagues Under the Seas", "Jules Verne", 1870, []string{"science fiction", "sea"}},
	{1020, "Alice's Adventures in Wonderland", "Lewis Carroll", 1865, []string{"fantasy"}},
	{1021, "The Adventures of Huckleberry Finn", "Mark Twain", 1884, []string{"novel", "adventure"}},
	{1022, "Middlemarch", "George Eliot", 1871, []string{"novel"}},
	{1023, "Gulliver's Travels", "Jonathan Swift", 1726, []string{"satire", "sea"}},
	{1024, "The Divine Comedy", "Dante Alighieri", 1320, []string{"poetry"}},
}

const booksPerPage = 8

func (b book) price() string  { return fmt.Sprintf("%d.%02d", 8+b.ID%17, (b.ID*37)%100) }
func (b book) rating() string { return fmt.Sprintf("%.1f", 7.5+float64(b.ID%25)/10) }

func bookList(w http.ResponseWriter, r *http.Request) int {
	start := 0
	if s := r.URL.Query().Get("start"); s != "" {
		if _, err := fmt.Sscanf(s, "%d", &start); err != nil || start < 0 || start >= len(books) || start%booksPerPage != 0 {
			http.NotFound(w, r)
			return http.StatusNotFound
		}
	}
	end := min(start+booksPerPage, len(books))
	var b strings.Builder
	b.WriteString("<ul class=\"subject-list\">\n")
	for _, bk := range books[start:end] {
		fmt.Fprintf(&b, "<li class=\"subject-item\"><h2><a href=\"/books/subject/%d/\">%s</a></h2><div class=\"pub\">%s / %d</div></li>\n",
			bk.ID, html.EscapeString(bk.Title), html.EscapeString(bk.Author), bk.Year)
	}
	b.WriteString("</ul>\n<div class=\"paginator\">")
	if start > 0 {
		prev := "/books/" // the first page has one URL only
		if start > booksPerPage {
			prev = fmt.Sprintf("/books/?start=%d", start-booksPerPage)
		}
		fmt.Fprintf(&b, "<a class=\"prev\" href=\"%s\">previous</a> ", prev)
	}
	if end < len(books) {
		fmt.Fprintf(&b, "<a class=\"next\" href=\"/books/?start=%d\">next</a>", end)
	}
	b.WriteString("</div>\n<p><a href=\"/\">home</a> <a href=\"/book/\">books by tag</a></p>\n")
	return page(w, fmt.Sprintf("Book list (%d-%d of %d)", start+1, end, len(books)), b.String())
}

func bookDetail(w http.ResponseWriter, r *http.Request, rest string) int {
	var id int
	if _, err := fmt.Sscanf(rest, "%d/", &id); err != nil || rest != fmt.Sprintf("%d/", id) {
		http.NotFound(w, r)
		return http.StatusNotFound
	}
	for _, bk := range books {
		if bk.ID != id {
			continue
		}
		var tags strings.Builder
		for _, t := range bk.Tags {
			fmt.Fprintf(&tags, "<a class=\"tag\" href=\"/book/\">%s</a> ", html.EscapeString(t))
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html>
<html><head><title>%[1]s</title></head>
<body><h1><span property="v:itemreviewed">%[1]s</span></h1>
<div id="info"><span class="author"><span class="pl">Author</span>: <a href="/books/">%[2]s</a></span><br>
<span class="pl">Published</span>: %[3]d<br>
<span class="price"><span class="pl">Price</span>: %[4]s CNY</span></div>
<div id="interest"><strong class="ll rating_num" property="v:average">%[5]s</strong></div>
<div id="tags">%[6]s</div>
<p><a href="/books/">all books</a></p>
</body></html>
`, html.EscapeString(bk.Title), html.EscapeString(bk.Author), bk.Year, bk.price(), bk.rating(), tags.String())
		return http.StatusOK
	}
	http.NotFound(w, r)
	return http.StatusNotFound
}

func page(w http.ResponseWriter, title, body string) int {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, "<!doctype html>\n<html><head><title>%s</title></head>\n<body><h1>%s</h1>\n%s</body></html>\n",
		html.EscapeString(title), html.EscapeString(title), body)
	return http.StatusOK
}
