// node-probe checks, from inside a Pod on the test node, what an in-cluster client relies on:
// the projected service-account token and CA are mounted, and the apiserver at
// KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT accepts the token. It asks the apiserver who
// it is (a SelfSubjectReview), prints `authenticated as USER`, marks itself ready and then
// waits for SIGTERM. Any failure is printed and exits 1.
//
// `node-probe -ready` is the readiness probe: exit 0 once the check has passed.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const (
	saDir     = "/var/run/secrets/kubernetes.io/serviceaccount"
	readyFile = "/tmp/node-probe-ready"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-ready" {
		if _, err := os.Stat(readyFile); err != nil {
			os.Exit(1)
		}
		return
	}
	user, err := whoAmI()
	if err != nil {
		fmt.Fprintf(os.Stderr, "node-probe: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("authenticated as %s\n", user)
	if err := os.WriteFile(readyFile, []byte(user), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "node-probe: %v\n", err)
		os.Exit(1)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}

func whoAmI() (string, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return "", fmt.Errorf("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set")
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return "", fmt.Errorf("the service-account token: %w", err)
	}
	caPEM, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return "", fmt.Errorf("the cluster CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return "", fmt.Errorf("%s/ca.crt holds no certificate", saDir)
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	body := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	url := "https://" + net.JoinHostPort(host, port) + "/apis/authentication.k8s.io/v1/selfsubjectreviews"
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+string(bytes.TrimSpace(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("POST %s: %w", url, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("POST %s: %s: %s", url, resp.Status, answer)
	}
	var review struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(answer, &review); err != nil || review.Status.UserInfo.Username == "" {
		return "", fmt.Errorf("unexpected SelfSubjectReview answer %s (%v)", answer, err)
	}
	return review.Status.UserInfo.Username, nil
}
