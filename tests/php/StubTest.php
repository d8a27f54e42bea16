<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/** php-stubs/joinblock.stub.php states exactly what the implementation under test exports. */
final class StubTest extends JoinBlockTestCase
{
    public function testStubMatchesTheImplementation(): void
    {
        $script = self::fixture('signatures.php');
        $fromImplementation = self::runPhpOk(self::implementation() === 'polyfill'
            // Declared into a PHP without any extension, as the stub below.
            ? [PHP_BINARY, '-n', $script, 'polyfill', self::polyfillFile()]
            : self::phpCommand($script, 'ext'));
        // The stub is declared into a PHP without the extension, as PHPStan would read it.
        $fromStub = self::runPhpOk([PHP_BINARY, '-n', $script, 'stub', dirname(__DIR__, 2) . '/php-stubs/joinblock.stub.php']);
        $this->assertNotEmpty(json_decode($fromImplementation, true)['functions']);
        $this->assertSame($fromStub, $fromImplementation);
    }
}
