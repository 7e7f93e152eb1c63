from control.meshctl import main

main()
