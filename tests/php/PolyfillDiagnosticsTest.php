<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

use PHPUnit\Framework\Attributes\DataProvider;

/**
 * The polyfill raises no diagnostic of its own, not even a deprecation, under PHP's strictest
 * settings (`error_reporting=-1`, `zend.assertions=1`), on whatever PHP the suite runs under:
 * each new PHP deprecates something (8.4 implicitly nullable parameters, 8.5 non-canonical
 * casts, `curl_close()` and more), and a site on that PHP with WP_DEBUG on would log it on every
 * request. And since `@` keeps nothing from an error handler, a failing file call of its own
 * (a state file not made yet) must not reach the caller's handler either: one that throws
 * would turn it into an ErrorException out of the tag check. Runs in both runs: the polyfill
 * is the product on hosts without the extension.
 */
final class PolyfillDiagnosticsTest extends JoinBlockTestCase
{
    private const STRICTEST = ['-d', 'error_reporting=-1', '-d', 'zend.assertions=1', '-d', 'display_errors=stderr', '-d', 'display_startup_errors=1'];

    public static function handlers(): array
    {
        return ['a handler that records' => ['record'], 'a handler that throws' => ['throw']];
    }

    /** @dataProvider handlers */
    #[DataProvider('handlers')]
    public function testEveryPathRunsWithoutADiagnosticUnderTheStrictestSettings(string $handler): void
    {
        $server = StandInServer::start();
        $db = MariaDbServer::startPrivate();
        try {
            $server->load(['Members', "Won't renew"], [
                ['email' => 'ann@example.org', 'tags' => ['Members']],
                ['email' => "o'neil@example.org", 'tags' => ['Members']],
            ]);
            $dir = $this->scratchDir();
            $holder = self::startHolding(self::scenario('plain-flock-hold', $dir, 'held@example.org', '30'));
            try {
                $run = self::runPhp([PHP_BINARY, ...self::bareWith(self::POLYFILL_EXTENSIONS), ...self::STRICTEST, self::fixture('polyfill_every_path.php'),
                    self::polyfillEntry(), $dir, 'held@example.org', $server->baseUrl(), StandInServer::API_KEY, $db->url(), $handler]);
            } finally {
                proc_terminate($holder['proc']);
                self::finish($holder);
            }
        } finally {
            $server->stop();
            $db->destroy();
        }
        $this->assertSame(['exit' => 0, 'err' => ''], ['exit' => $run['exit'], 'err' => $run['err']], $run['out']);
        $report = json_decode($run['out'], true, 512, JSON_THROW_ON_ERROR);
        $this->assertSame([
            'file lock' => true,
            'same key twice' => 'JoinBlock\LockException',
            'timed wait on a held key' => 'JoinBlock\LockTimeoutException',
            'blank key' => 'ValueError',
            'unknown option' => 'ValueError',
            'has the tag' => true,
            'apostrophe, not tagged' => false,
            'no such person' => null,
            'wrong API key' => 'JoinBlock\ActionNetworkException',
            'mysql lock' => true,
            'tag, site-wide state' => true,
            'status' => true,
            'bad URL' => 'ValueError',
        ], $report['results'], 'each path ran, with its usual outcome');
        $this->assertSame([], $report['raised'], 'no notice, warning or deprecation from loading the polyfill or from any call');
    }

    /**
     * The polyfill keeps the warnings of its own failing calls from the caller's error handler
     * (it tests each result instead), but nothing else: a mistake of its own ("Undefined
     * variable") reaches the handler at once, and a deprecation once the span is over (when a
     * handler that throws leaves nothing half-done). Shown with a copy of the polyfill that has
     * one more file raising all three inside a kept span.
     */
    public function testOnlyTheWarningsOfFailingCallsAreKeptFromTheCallersHandler(): void
    {
        $copy = $this->scratchDir(0755);
        exec('cp -R ' . escapeshellarg(\dirname(self::polyfillFile())) . '/. ' . escapeshellarg($copy));
        file_put_contents("$copy/polyfill/raises.php", "<?php\ntrigger_error('a deprecation in the polyfill', E_USER_DEPRECATED);\nfopen('/nonexistent/file', 'r');\necho \$undefined;\n");
        $code = sprintf(<<<'PHP'
            require %s;
            $raised = [];
            set_error_handler(function (int $type, string $message) use (&$raised): bool { $raised[] = $message; return true; });
            JoinBlock\Polyfill\Os::kept();
            require %s;
            $during = $raised;
            JoinBlock\Polyfill\Os::unkept();
            echo json_encode(['during' => $during, 'after' => $raised, 'kept' => JoinBlock\Polyfill\Os::reason()]), "\n";
            PHP, var_export("$copy/joinblock.php", true), var_export("$copy/polyfill/raises.php", true));
        $out = json_decode(self::runPhpOk([PHP_BINARY, ...self::bareWith(self::POLYFILL_EXTENSIONS), ...self::STRICTEST, '-r', $code]), true);
        $this->assertSame(['Undefined variable $undefined'], $out['during'], 'our own mistake, at once; the deprecation not yet');
        $this->assertSame(['Undefined variable $undefined', "a deprecation in the polyfill (in $copy/polyfill/raises.php on line 2)"], $out['after'], 'the deprecation once the span closed');
        $this->assertSame('No such file or directory', $out['kept'], 'the failing call\'s warning kept, its reason known');
    }
}
