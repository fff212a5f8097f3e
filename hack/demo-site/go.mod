module crawler-operator/hack/demo-site

go 1.26
