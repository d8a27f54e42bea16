<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/**
 * Debian's chromium, headless, driven over the DevTools protocol on a pipe
 * (`--remote-debugging-pipe`: JSON messages ending in NUL, on file descriptors 3 and 4), so it
 * can carry a logged-in session's cookies and wait for a page's scripts before a screenshot.
 */
final class HeadlessChromium
{
    /** @var array<int, resource> */
    private array $pipes;
    private int $id = 0;
    private string $buffer = '';

    /** @param resource $process */
    private function __construct(private $process, array $pipes, private string $profile)
    {
        $this->pipes = $pipes;
    }

    /**
     * Opens `$url` with these cookies in a 1280 px wide window, waits for WordPress's Site
     * Health scripts to finish, expands and scrolls to the accordion panel `$expand` (an id)
     * when given, and saves a PNG of the window at `$png`.
     *
     * @param list<array{name: string, value: string, path: string}> $cookies
     */
    public static function screenshot(string $url, array $cookies, string $png, ?string $expand = null): void
    {
        $profile = sys_get_temp_dir() . '/joinblock-chromium-' . bin2hex(random_bytes(4));
        mkdir($profile, 0700);
        $command = ['/usr/bin/chromium', '--headless=new', '--no-sandbox', '--disable-gpu', '--remote-debugging-pipe',
            "--user-data-dir=$profile", '--no-first-run', '--hide-scrollbars', 'about:blank'];
        $process = proc_open($command, [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', "$profile.log", 'w'], 3 => ['pipe', 'r'], 4 => ['pipe', 'w']], $pipes);
        $browser = new self($process, $pipes, $profile);
        try {
            $browser->capture($url, $cookies, $png, $expand);
        } finally {
            $browser->close();
        }
    }

    private function capture(string $url, array $cookies, string $png, ?string $expand): void
    {
        $this->call('Storage.setCookies', ['cookies' => array_map(fn (array $c) => $c + ['url' => $url], $cookies)]);
        $target = $this->call('Target.createTarget', ['url' => 'about:blank'])['targetId'];
        $session = $this->call('Target.attachToTarget', ['targetId' => $target, 'flatten' => true])['sessionId'];
        $this->call('Emulation.setDeviceMetricsOverride', ['width' => 1280, 'height' => 900, 'deviceScaleFactor' => 1, 'mobile' => false], $session);
        $this->call('Page.navigate', ['url' => $url], $session);
        // Site Health's status page runs its asynchronous tests after loading; it is done when
        // its progress wrapper loses the class "loading".
        $done = "document.readyState === 'complete' && !!document.querySelector('.site-health-progress-wrapper') && !document.querySelector('.site-health-progress-wrapper.loading')";
        $deadline = microtime(true) + 60;
        while (!($this->call('Runtime.evaluate', ['expression' => $done, 'returnByValue' => true], $session)['result']['value'] ?? false)) {
            if (microtime(true) > $deadline) {
                throw new \RuntimeException("$url did not finish loading in chromium");
            }
            usleep(200000);
        }
        if ($expand !== null) {
            $js = "const b = document.querySelector('[aria-controls=%s]'); b.click(); b.scrollIntoView(); window.scrollBy(0, -160);";
            $this->call('Runtime.evaluate', ['expression' => sprintf($js, json_encode($expand))], $session);
            usleep(500000);
        }
        $shot = $this->call('Page.captureScreenshot', ['format' => 'png'], $session);
        file_put_contents($png, base64_decode($shot['data'], true));
    }

    /** Sends one command and waits for its answer (events in between are skipped). */
    private function call(string $method, array $params = [], ?string $session = null): array
    {
        $id = ++$this->id;
        $message = ['id' => $id, 'method' => $method, 'params' => (object) $params] + ($session === null ? [] : ['sessionId' => $session]);
        fwrite($this->pipes[3], json_encode($message, JSON_UNESCAPED_SLASHES) . "\0");
        $deadline = microtime(true) + 30;
        while (true) {
            while (($end = strpos($this->buffer, "\0")) !== false) {
                $reply = json_decode(substr($this->buffer, 0, $end), true);
                $this->buffer = substr($this->buffer, $end + 1);
                if (($reply['id'] ?? null) === $id) {
                    if (isset($reply['error'])) {
                        throw new \RuntimeException("chromium: $method: " . json_encode($reply['error']));
                    }
                    return $reply['result'];
                }
            }
            $read = [$this->pipes[4]];
            $none = null;
            if (microtime(true) > $deadline || stream_select($read, $none, $none, 1) === false) {
                throw new \RuntimeException("chromium did not answer $method: " . @file_get_contents("$this->profile.log"));
            }
            $chunk = fread($this->pipes[4], 1 << 20);
            if ($chunk === '' && feof($this->pipes[4])) {
                throw new \RuntimeException("chromium exited during $method: " . @file_get_contents("$this->profile.log"));
            }
            $this->buffer .= $chunk;
        }
    }

    private function close(): void
    {
        try {
            $this->call('Browser.close');
        } catch (\RuntimeException) {
            // Killed below.
        }
        $deadline = microtime(true) + 10;
        while (proc_get_status($this->process)['running'] && microtime(true) < $deadline) {
            usleep(50000);
        }
        proc_terminate($this->process, SIGKILL);
        foreach ($this->pipes as $pipe) {
            fclose($pipe);
        }
        proc_close($this->process);
        exec('rm -rf ' . escapeshellarg($this->profile) . ' ' . escapeshellarg("$this->profile.log"));
    }
}
